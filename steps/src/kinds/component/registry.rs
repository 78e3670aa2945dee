//! `registry.check`: reads a registry value through the registry API
//! (`RegGetValueW`; never `reg.exe`'s localized text) and checks it: present,
//! and equal to `expect` if given.
//!
//! Parameters: `key` (`HKLM\...` or `HKEY_LOCAL_MACHINE\...`; also `HKCU`,
//! `HKCR`, `HKU`), `name` (the value's name; `""` is the key's default
//! value), `expect` (optional: the text the value must have; a DWORD/QWORD
//! is compared as its decimal text), `view` (`"64"` default, or `"32"` for
//! WOW6432Node). Outputs: `value` (the text read), `type` (`REG_SZ`,
//! `REG_EXPAND_SZ`, `REG_DWORD`, `REG_QWORD`, `REG_MULTI_SZ` joined by
//! newlines). Probe: the same check (for drift). Off Windows there is no
//! registry: the step fails, saying so (the probe is Unknown).
//! Ran under Wine in CI (tests/wine/e2e: values a real MSI wrote).

use serde::Deserialize;

use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `registry.check` kind.
pub const KIND: KindFn = KindFn {
    name: "registry.check",
    summary: "read a registry value through the registry API; present, and equal to `expect` if given",
    local_paths: &[],
    build,
};

/// A root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// HKEY_LOCAL_MACHINE.
    LocalMachine,
    /// HKEY_CURRENT_USER.
    CurrentUser,
    /// HKEY_CLASSES_ROOT.
    ClassesRoot,
    /// HKEY_USERS.
    Users,
}

/// Splits `HKLM\Software\X` into the root and the subkey path.
pub fn parse_key(key: &str) -> Result<(Root, String), String> {
    let (root, rest) = key.split_once('\\').unwrap_or((key, ""));
    let root = match root.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => Root::LocalMachine,
        "HKCU" | "HKEY_CURRENT_USER" => Root::CurrentUser,
        "HKCR" | "HKEY_CLASSES_ROOT" => Root::ClassesRoot,
        "HKU" | "HKEY_USERS" => Root::Users,
        other => {
            return Err(format!(
                "`{other}` is not a registry root (HKLM, HKCU, HKCR or HKU)"
            ));
        }
    };
    let rest = rest.trim_matches('\\');
    if rest.is_empty() {
        return Err("the key names no subkey under its root".into());
    }
    Ok((root, rest.to_string()))
}

/// What was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The value as text.
    pub value: String,
    /// Its type name.
    pub kind: &'static str,
}

/// Judges what was read: `None` when fine, else the difference.
pub fn judge(key: &str, name: &str, found: Option<&Found>, expect: Option<&str>) -> Option<String> {
    let shown = if name.is_empty() { "(default)" } else { name };
    match (found, expect) {
        (None, _) => Some(format!("{key} has no value `{shown}`")),
        (Some(f), Some(want)) if f.value != want => {
            Some(format!("{key} `{shown}` is `{}`, not `{want}`", f.value))
        }
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    key: String,
    #[serde(default)]
    name: String,
    expect: Option<String>,
    view: Option<String>,
}

struct RegistryCheck {
    key: String,
    #[cfg_attr(not(windows), allow(dead_code))]
    root: Root,
    #[cfg_attr(not(windows), allow(dead_code))]
    path: String,
    name: String,
    expect: Option<String>,
    #[cfg_attr(not(windows), allow(dead_code))]
    wow32: bool,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let (root, path) = parse_key(&p.key)
        .map_err(|m| ParamError::field("key", m).hint("e.g. key = 'HKLM\\SOFTWARE\\Luware\\TM'"))?;
    let wow32 = match p.view.as_deref() {
        None | Some("64") => false,
        Some("32") => true,
        Some(v) => {
            return Err(
                ParamError::field("view", format!("`{v}` is not a view")).hint("\"64\" or \"32\"")
            );
        }
    };
    Ok(Box::new(RegistryCheck {
        key: p.key,
        root,
        path,
        name: p.name,
        expect: p.expect,
        wow32,
    }))
}

impl RegistryCheck {
    /// `Ok(None)`: no such key or value.
    fn read(&self) -> Result<Option<Found>, StepError> {
        #[cfg(windows)]
        {
            api::read(self.root, &self.path, &self.name, self.wow32).map_err(StepError::fatal)
        }
        #[cfg(not(windows))]
        {
            Err(StepError::fatal(
                "registry.check: there is no Windows registry here (not Windows)",
            ))
        }
    }
}

/// The registry API (Windows only).
#[cfg(windows)]
#[allow(unsafe_code)]
mod api {
    use windows_sys::Win32::System::Registry::{
        HKEY, HKEY_CLASSES_ROOT, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, HKEY_USERS, REG_DWORD,
        REG_EXPAND_SZ, REG_MULTI_SZ, REG_QWORD, REG_SZ, RRF_NOEXPAND, RRF_RT_ANY,
        RRF_SUBKEY_WOW6432KEY, RRF_SUBKEY_WOW6464KEY, RegGetValueW,
    };

    use super::{Found, Root};

    pub fn read(root: Root, path: &str, name: &str, wow32: bool) -> Result<Option<Found>, String> {
        const ERROR_FILE_NOT_FOUND: u32 = 2;
        const ERROR_MORE_DATA: u32 = 234;
        let hkey: HKEY = match root {
            Root::LocalMachine => HKEY_LOCAL_MACHINE,
            Root::CurrentUser => HKEY_CURRENT_USER,
            Root::ClassesRoot => HKEY_CLASSES_ROOT,
            Root::Users => HKEY_USERS,
        };
        let wpath: Vec<u16> = path.encode_utf16().chain([0]).collect();
        let wname: Vec<u16> = name.encode_utf16().chain([0]).collect();
        let flags = RRF_RT_ANY
            | RRF_NOEXPAND
            | if wow32 {
                RRF_SUBKEY_WOW6432KEY
            } else {
                RRF_SUBKEY_WOW6464KEY
            };
        let mut buf: Vec<u8> = vec![0; 256];
        loop {
            let mut ty = 0u32;
            let mut len = buf.len() as u32;
            // SAFETY: the strings are NUL-terminated and outlive the call;
            // `buf` holds `len` bytes, which the call updates.
            let rc = unsafe {
                RegGetValueW(
                    hkey,
                    wpath.as_ptr(),
                    wname.as_ptr(),
                    flags,
                    &mut ty,
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            match rc {
                0 => {
                    let data = &buf[..len as usize];
                    let text = |d: &[u8]| {
                        let units: Vec<u16> = d
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16_lossy(&units)
                    };
                    let found = match ty {
                        REG_SZ | REG_EXPAND_SZ => Found {
                            value: text(data).trim_end_matches('\0').to_string(),
                            kind: if ty == REG_SZ {
                                "REG_SZ"
                            } else {
                                "REG_EXPAND_SZ"
                            },
                        },
                        REG_MULTI_SZ => Found {
                            value: text(data)
                                .trim_end_matches('\0')
                                .split('\0')
                                .collect::<Vec<_>>()
                                .join("\n"),
                            kind: "REG_MULTI_SZ",
                        },
                        REG_DWORD if data.len() >= 4 => Found {
                            value: u32::from_le_bytes([data[0], data[1], data[2], data[3]])
                                .to_string(),
                            kind: "REG_DWORD",
                        },
                        REG_QWORD if data.len() >= 8 => Found {
                            value: u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]))
                                .to_string(),
                            kind: "REG_QWORD",
                        },
                        other => {
                            return Err(format!(
                                "value of registry type {other} cannot be compared as text"
                            ));
                        }
                    };
                    return Ok(Some(found));
                }
                ERROR_FILE_NOT_FOUND => return Ok(None),
                ERROR_MORE_DATA => buf = vec![0; len as usize + 2],
                rc => {
                    return Err(format!(
                        "RegGetValueW({path}, {name}) failed with Windows error {rc}"
                    ));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Step for RegistryCheck {
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "read {}\\{} through the registry API{}",
            self.key,
            if self.name.is_empty() {
                "(default)"
            } else {
                &self.name
            },
            match &self.expect {
                Some(v) => format!("; must be `{v}`"),
                None => "; must exist".into(),
            }
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let found = self.read()?;
        if let Some(diff) = judge(
            &self.key,
            &self.name,
            found.as_ref(),
            self.expect.as_deref(),
        ) {
            return Err(StepError::fatal(diff));
        }
        let found = found.expect("judged present");
        ctx.output(&format!("{} = {}\n", found.kind, found.value));
        let mut outputs = Outputs::new();
        outputs.insert("value".into(), found.value);
        outputs.insert("type".into(), found.kind.into());
        Ok(StepOutcome::with_outputs(outputs))
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        if !cfg!(windows) {
            return Ok(Probe::Unknown);
        }
        let found = self.read()?;
        Ok(
            match judge(
                &self.key,
                &self.name,
                found.as_ref(),
                self.expect.as_deref(),
            ) {
                None => Probe::InPlace,
                Some(d) => Probe::Differs(d),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed() {
        assert_eq!(
            parse_key(r"HKLM\SOFTWARE\Luware\TM"),
            Ok((Root::LocalMachine, r"SOFTWARE\Luware\TM".into()))
        );
        assert_eq!(
            parse_key(r"hkey_current_user\x\"),
            Ok((Root::CurrentUser, "x".into()))
        );
        assert!(
            parse_key(r"HKXX\a")
                .unwrap_err()
                .contains("not a registry root")
        );
        assert!(parse_key("HKLM").unwrap_err().contains("no subkey"));
    }

    #[test]
    fn values_are_judged() {
        let f = Found {
            value: "1.0.0".into(),
            kind: "REG_SZ",
        };
        assert_eq!(judge("K", "V", Some(&f), Some("1.0.0")), None);
        assert_eq!(judge("K", "V", Some(&f), None), None);
        assert_eq!(
            judge("K", "V", Some(&f), Some("2.0.0")).as_deref(),
            Some("K `V` is `1.0.0`, not `2.0.0`")
        );
        assert_eq!(
            judge("K", "", None, None).as_deref(),
            Some("K has no value `(default)`")
        );
    }

    #[test]
    fn parameters_are_checked() {
        let t = |s: &str| build(&toml::from_str::<toml::Table>(s).unwrap());
        assert!(t(r#"key = 'HKLM\SOFTWARE\X'"#).is_ok());
        assert_eq!(
            t(r#"key = 'HKZZ\X'"#).err().unwrap().field.as_deref(),
            Some("key")
        );
        assert_eq!(
            t(r#"key = 'HKLM\X'
view = "16""#)
            .err()
            .unwrap()
            .field
            .as_deref(),
            Some("view")
        );
    }
}
