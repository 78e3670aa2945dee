//! `msi.install` / `msi.uninstall`: Windows Installer packages through
//! `msiexec /qn /norestart /l*v <log>`.
//!
//! **Command line.** msiexec parses its own command line (not the C runtime
//! rules): a property value with spaces is written `NAME="a b"` and a quote
//! inside it is doubled (`NAME="say ""hi"""`). Rust's `Command` would quote
//! such an argument by C runtime rules (`"NAME=\"a b\""`), which msiexec
//! misreads, so on Windows `msiexec.exe` is started directly with the exact
//! command line built here (`CommandExt::raw_arg`; no PowerShell, which
//! real hosts may restrict and Wine lacks). Elsewhere the same tokens are
//! passed as plain argv to `with.program`, a stand-in
//! (`steps/tests/standins/msiexec`).
//!
//! **Exit codes.** 0 = success; 3010 and 1641 = success, reboot required;
//! 1618 = another installation in progress (transient); on uninstall 1605 =
//! the product is not installed (success: already absent); anything else
//! fails with the code's meaning and the error lines of the verbose log
//! (UTF-16LE on Windows; decoded either way).
//!
//! **Probe.** With `product_code`: on Windows the Windows Installer API
//! (`MsiQueryProductStateW`, then `MsiGetProductInfoW(VersionString)`; no
//! tool text to parse, so no language dependence); elsewhere the stand-in's
//! state file (`with.standin_state`, default `msiexec-state/installed.txt`
//! beside `with.program`). An install whose product (and `version`, if
//! given) is already there is skipped, which is how a run resumed after a
//! reboot goes on. After msiexec reports success, the probe is trusted over
//! the exit code: an install whose product is then absent (or at another
//! version than `version`), or an uninstall whose product is still there,
//! fails.
//!
//! **Ports (preflight only).** `listens = { port, service, exe, iis_site }`
//! says what the installed component listens on; the run ignores it, and
//! `upshift preflight` checks the port is free or held by the component
//! itself (its `service`, its `exe`, or HTTP.sys for its `iis_site`), and
//! that no other IIS site binds an `iis_site`'s port
//! ([`crate::preflight::ports`]).
//!
//! **Compensation.** install: uninstall what was installed (when
//! `product_code` is known), then reinstall `previous_package` if given.
//! uninstall: reinstall the package that was removed (`package`), with the
//! same properties. Both record `previous_package` in the outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::appsettings::SettingValue;
use crate::child::{self, ChildSpec};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `msi.install` kind.
pub const INSTALL: KindFn = KindFn {
    name: "msi.install",
    summary: "install an MSI with msiexec /qn /norestart /l*v; 3010/1641 = reboot required",
    build: build_install,
    local_paths: &[
        crate::LocalPath::input("package", false),
        crate::LocalPath::any("previous_package", false),
    ],
};

/// The `msi.uninstall` kind.
pub const UNINSTALL: KindFn = KindFn {
    name: "msi.uninstall",
    summary: "uninstall an MSI (package or ProductCode); 1605 = already absent",
    build: build_uninstall,
    local_paths: &[crate::LocalPath::any("package", false)],
};

/// Default `INSTALLFOLDER` (the manual's default install folder).
pub const DEFAULT_INSTALL_FOLDER: &str = r"C:\Program Files\Luware AG";

/// The meaning of common msiexec exit codes.
pub fn exit_code_meaning(code: i32) -> &'static str {
    match code {
        0 => "success",
        13 => "the data is invalid",
        87 => "one of the parameters was invalid",
        1601 => "the Windows Installer service could not be accessed",
        1602 => "the user cancelled the installation",
        1603 => "a fatal error occurred during installation",
        1604 => "installation suspended, incomplete",
        1605 => "this action is only valid for products that are currently installed",
        1606 => "the feature identifier is not registered",
        1608 => "unknown property",
        1612 => "the installation source for this product is not available",
        1614 => "the product is uninstalled",
        1618 => "another installation is already in progress",
        1619 => "the installation package could not be opened",
        1620 => "the installation package could not be opened (not a valid package)",
        1624 => "error applying transforms",
        1625 => "the installation is forbidden by system policy",
        1626 => "the function could not be executed",
        1627 => "the function failed during execution",
        1631 => "the Windows Installer service failed to start",
        1632 => "the Temp folder is full or inaccessible",
        1633 => "this installation package is not supported on this platform",
        1636 => "the patch package could not be opened",
        1638 => "another version of this product is already installed",
        1639 => "invalid command line argument",
        1640 => "installation from a Terminal Server client session is not permitted",
        1641 => "success; the installer has started a reboot",
        1642 => "the upgrade cannot be installed (program missing or wrong version)",
        1643 => "the patch package is not permitted by system policy",
        1644 => "customizations are not permitted by system policy",
        1650 => "the installation package was blocked",
        3010 => "success; a reboot is required to complete the install",
        _ => "unknown exit code (see the log)",
    }
}

/// Quotes a token for msiexec's command line: wrapped in quotes when it
/// has a space, tab or quote (or is empty); quotes inside doubled.
pub fn quote_msi(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c == ' ' || c == '\t' || c == '"') {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('"', "\"\""))
    }
}

/// What msiexec is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `/i <package>`.
    Install(String),
    /// `/x <package or {ProductCode}>`.
    Uninstall(String),
}

/// msiexec's arguments as tokens (argv), before command-line quoting.
pub fn msi_tokens(
    op: &Operation,
    log: &Path,
    properties: &[(String, String)],
) -> Vec<(String, Option<String>)> {
    let (flag, target) = match op {
        Operation::Install(p) => ("/i", p),
        Operation::Uninstall(t) => ("/x", t),
    };
    let mut t: Vec<(String, Option<String>)> = vec![
        (flag.into(), None),
        (target.clone(), None),
        ("/qn".into(), None),
        ("/norestart".into(), None),
        ("/l*v".into(), None),
        (log.display().to_string(), None),
    ];
    for (k, v) in properties {
        t.push((k.clone(), Some(v.clone())));
    }
    t
}

/// The Windows command line (after the program name) for the tokens.
pub fn command_line(tokens: &[(String, Option<String>)]) -> String {
    tokens
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={}", quote_msi(v)),
            None => quote_msi(k),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tokens as argv (for the stand-in): `NAME=value`, unquoted.
pub fn argv(tokens: &[(String, Option<String>)]) -> Vec<String> {
    tokens
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect()
}

/// Decodes an msiexec log: UTF-16LE (with or without BOM, as on Windows)
/// or UTF-8.
pub fn decode_log(bytes: &[u8]) -> String {
    let utf16 = bytes.starts_with(&[0xFF, 0xFE])
        || (bytes.len() >= 4 && bytes.len().is_multiple_of(2) && bytes[1] == 0 && bytes[3] == 0);
    if utf16 {
        let body = bytes.strip_prefix(&[0xFF, 0xFE]).unwrap_or(bytes);
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        String::from_utf8_lossy(body).into_owned()
    }
}

/// The lines of a verbose log that explain a failure: the lines before the
/// first `Return value 3` (where the failing action ended), else the lines
/// mentioning an error, else the end of the log. At most `max` lines.
pub fn error_lines(log: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.trim_end())
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(i) = lines.iter().position(|l| l.contains("Return value 3")) {
        let start = (i + 1).saturating_sub(max);
        return lines[start..=i].iter().map(|s| s.to_string()).collect();
    }
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("failed")
        })
        .collect();
    let pick = if errors.is_empty() {
        &lines[..]
    } else {
        &errors[..]
    };
    pick[pick.len().saturating_sub(max)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Checks a ProductCode: `{` + GUID + `}`.
pub fn valid_product_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 38
        && b[0] == b'{'
        && b[37] == b'}'
        && code[1..37].char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Parses the stand-in's state file: the version installed under `code`.
pub fn parse_standin_state(text: &str, code: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.split('\t');
        (f.next()?.eq_ignore_ascii_case(code)).then(|| f.next().unwrap_or("").to_string())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    package: Option<PathBuf>,
    /// Checked by `upshift preflight` against the package's UpgradeCode.
    upgrade_code: Option<String>,
    product_code: Option<String>,
    version: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, SettingValue>,
    install_folder: Option<String>,
    previous_package: Option<PathBuf>,
    program: Option<String>,
    standin_state: Option<PathBuf>,
    /// The names the package really uses for `properties`' keys (`KEY =
    /// "REALNAME"`; `""` leaves the property out): property names are
    /// often an assumption, kept in one table a site can correct.
    #[serde(default)]
    property_names: BTreeMap<String, String>,
    /// What the installed component listens on (checked by preflight
    /// only).
    listens: Option<ListensParams>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListensParams {
    port: SettingValue,
    service: Option<String>,
    exe: Option<String>,
    iis_site: Option<String>,
}

fn listens_from(
    p: Option<ListensParams>,
) -> Result<Option<crate::preflight::ports::Listens>, ParamError> {
    let Some(p) = p else {
        return Ok(None);
    };
    let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let port = p.port.0.trim();
    let port: u16 = match port.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(ParamError::field(
                "listens.port",
                format!("`{port}` is not a TCP port (1-65535)"),
            )
            .hint("the port the installed component listens on, e.g. port = 8101"));
        }
    };
    Ok(Some(crate::preflight::ports::Listens {
        port,
        service: given(p.service),
        exe: given(p.exe),
        iis_site: given(p.iis_site),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Install,
    Uninstall,
}

struct Msi {
    mode: Mode,
    package: Option<PathBuf>,
    upgrade_code: Option<String>,
    product_code: Option<String>,
    version: Option<String>,
    properties: Vec<(String, String)>,
    previous_package: Option<PathBuf>,
    program: String,
    standin_state: Option<PathBuf>,
    listens: Option<crate::preflight::ports::Listens>,
}

fn build_install(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    build(with, Mode::Install)
}

fn build_uninstall(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    build(with, Mode::Uninstall)
}

fn valid_property(name: &str) -> bool {
    let mut c = name.chars();
    matches!(c.next(), Some(x) if x.is_ascii_uppercase() || x == '_')
        && c.all(|x| x.is_ascii_uppercase() || x.is_ascii_digit() || x == '_' || x == '.')
}

fn build(with: &toml::Table, mode: Mode) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let listens = listens_from(p.listens)?;
    if listens.is_some() && mode == Mode::Uninstall {
        return Err(ParamError::field(
            "listens",
            "only msi.install takes `listens` (what the installed component listens on)",
        ));
    }
    if let Some(code) = &p.product_code
        && !valid_product_code(code)
    {
        return Err(
            ParamError::field("product_code", format!("`{code}` is not a ProductCode"))
                .hint("write it with braces: {12345678-1234-1234-1234-123456789ABC}"),
        );
    }
    if let Some(code) = &p.upgrade_code
        && !valid_product_code(code)
    {
        return Err(
            ParamError::field("upgrade_code", format!("`{code}` is not an UpgradeCode"))
                .hint("write it with braces: {12345678-1234-1234-1234-123456789ABC}"),
        );
    }
    match mode {
        Mode::Install if p.package.is_none() => {
            return Err(ParamError::field("package", "missing field `package`")
                .hint("the .msi to install, e.g. package = \"D:\\\\TM\\\\Luware-TM-ICH.msi\""));
        }
        Mode::Uninstall if p.package.is_none() && p.product_code.is_none() => {
            return Err(ParamError::field(
                "product_code",
                "give `package` or `product_code`",
            ));
        }
        _ => {}
    }
    let mut properties: Vec<(String, String)> = Vec::new();
    for (k, v) in p.properties {
        let k = match p.property_names.get(&k) {
            Some(real) if real.trim().is_empty() => continue,
            Some(real) => real.trim().to_string(),
            None => k,
        };
        if properties.iter().any(|(x, _)| *x == k) {
            return Err(ParamError::field(
                "property_names",
                format!("two properties end up named `{k}`"),
            ));
        }
        if !valid_property(&k) {
            return Err(ParamError::field(
                "properties",
                format!("`{k}` is not a public MSI property (upper case letters, digits, _)"),
            )
            .hint("only public (all upper-case) properties can be set on the command line"));
        }
        if v.0.contains(['\r', '\n', '\0']) {
            return Err(ParamError::field(
                "properties",
                format!("`{k}` holds a line break"),
            ));
        }
        properties.push((k, v.0));
    }
    if mode == Mode::Install && !properties.iter().any(|(k, _)| k == "INSTALLFOLDER") {
        let folder = p
            .install_folder
            .unwrap_or_else(|| DEFAULT_INSTALL_FOLDER.to_string());
        if !folder.is_empty() {
            properties.push(("INSTALLFOLDER".into(), folder));
        }
    }
    let program = p.program.unwrap_or_else(|| {
        if cfg!(windows) {
            "msiexec.exe"
        } else {
            "msiexec"
        }
        .to_string()
    });
    let standin_state = p.standin_state.or_else(|| {
        let prog = Path::new(&program);
        prog.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.join("msiexec-state").join("installed.txt"))
    });
    Ok(Box::new(Msi {
        mode,
        package: p.package,
        upgrade_code: p.upgrade_code,
        product_code: p.product_code,
        version: p.version,
        properties,
        previous_package: p.previous_package,
        program,
        standin_state,
        listens,
    }))
}

/// How msiexec is started: argv for the stand-in off Windows; on Windows
/// `program` itself with the exact msiexec command line (see the module
/// docs), the argv kept for display.
fn spec_for(program: &str, tokens: &[(String, Option<String>)]) -> ChildSpec {
    let mut spec = ChildSpec::new(program, argv(tokens));
    if cfg!(windows) {
        spec.raw_command_line = Some(command_line(tokens));
    }
    spec
}

impl Msi {
    fn target(&self) -> String {
        match (self.mode, &self.package, &self.product_code) {
            (Mode::Uninstall, _, Some(code)) => code.clone(),
            (_, Some(p), _) => p.display().to_string(),
            (_, None, Some(code)) => code.clone(),
            (_, None, None) => String::new(),
        }
    }

    fn operation(&self) -> Operation {
        match self.mode {
            Mode::Install => Operation::Install(self.target()),
            Mode::Uninstall => Operation::Uninstall(self.target()),
        }
    }

    fn log_path(ctx: &dyn StepContext, what: &str) -> PathBuf {
        ctx.work_dir().join(format!(
            "msiexec-{}-{what}-{}-{}.log",
            ctx.step_id(),
            ctx.attempt(),
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ))
    }

    /// The installed version of `product_code` (`Ok(None)`: not installed;
    /// `Err`: cannot tell).
    async fn installed_version(
        &self,
        ctx: &dyn StepContext,
    ) -> Result<Option<Option<String>>, StepError> {
        let Some(code) = &self.product_code else {
            return Ok(None);
        };
        installed_version(ctx, code, self.standin_state.as_deref())
            .await
            .map(Some)
    }

    async fn exec(
        &self,
        ctx: &dyn StepContext,
        op: Operation,
        properties: &[(String, String)],
    ) -> Result<(i32, PathBuf), StepError> {
        let what = match op {
            Operation::Install(_) => "install",
            Operation::Uninstall(_) => "uninstall",
        };
        std::fs::create_dir_all(ctx.work_dir()).map_err(|e| {
            StepError::fatal(format!("cannot create {}: {e}", ctx.work_dir().display()))
        })?;
        let log = Self::log_path(ctx, what);
        let tokens = msi_tokens(&op, &log, properties);
        ctx.output(&format!("msiexec {}\n", shown_line(&tokens)));
        let spec = spec_for(&self.program, &tokens);
        let exit = child::run(ctx, &spec).await?;
        Ok((full_exit_code(exit.code, &exit.stdout_tail), log))
    }

    fn judge(&self, code: i32, log: &Path, uninstall: bool) -> Result<bool, StepError> {
        match code {
            0 => Ok(false),
            3010 | 1641 => Ok(true),
            1605 if uninstall => Ok(false),
            1618 | 1601 | 1631 => Err(StepError::transient(format!(
                "msiexec exited with {code}: {} (retry later)",
                exit_code_meaning(code)
            ))),
            _ => {
                let text = std::fs::read(log)
                    .map(|b| decode_log(&b))
                    .unwrap_or_default();
                let lines = error_lines(&text, 12);
                Err(StepError::fatal(format!(
                    "msiexec exited with {code}: {}; log {}{}",
                    exit_code_meaning(code),
                    log.display(),
                    if lines.is_empty() {
                        " (empty or missing)".to_string()
                    } else {
                        format!(":\n  {}", lines.join("\n  "))
                    }
                )))
            }
        }
    }
}

/// The exit code. Off Windows, exit statuses are 8 bits, so the stand-in
/// msiexec prints its full code as a last stdout line
/// `msiexec-exit-code=N`, which wins when present.
fn full_exit_code(code: i32, stdout: &str) -> i32 {
    if cfg!(windows) {
        return code;
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("msiexec-exit-code=")?.parse().ok())
        .filter(|full: &i32| full % 256 == code % 256)
        .unwrap_or(code)
}

/// A dry-run/output form of the command line, secret-looking values hidden.
fn shown_line(tokens: &[(String, Option<String>)]) -> String {
    let shown: Vec<(String, Option<String>)> = tokens
        .iter()
        .map(|(k, v)| {
            let v = v.as_ref().map(|v| {
                if super::shown_value(k, v) == "(hidden)" {
                    "(hidden)".to_string()
                } else {
                    v.clone()
                }
            });
            (k.clone(), v)
        })
        .collect();
    command_line(&shown)
}

/// The installed version of a product (`None`: not installed).
pub(crate) async fn installed_version(
    ctx: &dyn StepContext,
    code: &str,
    standin_state: Option<&Path>,
) -> Result<Option<String>, StepError> {
    #[cfg(windows)]
    {
        let _ = (ctx, standin_state);
        windows_installer::installed_version(code).map_err(StepError::fatal)
    }
    #[cfg(not(windows))]
    {
        let _ = ctx;
        let Some(state) = standin_state else {
            return Err(StepError::fatal(
                "no installed-product state to read off Windows: set `standin_state` \
                 (the stand-in msiexec's installed.txt) or `program` to a stand-in path",
            ));
        };
        let text = std::fs::read_to_string(state).unwrap_or_default();
        Ok(parse_standin_state(&text, code))
    }
}

/// The Windows Installer API (msi.dll): what is installed, by ProductCode.
#[cfg(windows)]
mod windows_installer {
    use windows_sys::Win32::System::ApplicationInstallationAndServicing::{
        INSTALLSTATE_ADVERTISED, INSTALLSTATE_DEFAULT, MsiGetProductInfoW, MsiQueryProductStateW,
    };

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain([0]).collect()
    }

    /// `Ok(None)`: not installed (for this machine); `Ok(Some(v))`:
    /// installed at version `v` (`VersionString`).
    #[allow(unsafe_code)]
    pub fn installed_version(code: &str) -> Result<Option<String>, String> {
        const ERROR_MORE_DATA: u32 = 234;
        let product = wide(code);
        let property = wide("VersionString");
        // SAFETY: `product` is a NUL-terminated UTF-16 string that outlives
        // the call.
        let state = unsafe { MsiQueryProductStateW(product.as_ptr()) };
        if state != INSTALLSTATE_DEFAULT && state != INSTALLSTATE_ADVERTISED {
            return Ok(None);
        }
        let mut buf: Vec<u16> = vec![0; 64];
        loop {
            let mut len = buf.len() as u32;
            // SAFETY: `buf` holds `len` u16s; the API writes at most that
            // many (NUL included) and updates `len` to the characters
            // written, or to the size needed on ERROR_MORE_DATA.
            let rc = unsafe {
                MsiGetProductInfoW(
                    product.as_ptr(),
                    property.as_ptr(),
                    buf.as_mut_ptr(),
                    &mut len,
                )
            };
            match rc {
                0 => return Ok(Some(String::from_utf16_lossy(&buf[..len as usize]))),
                ERROR_MORE_DATA => buf = vec![0; len as usize + 1],
                // ERROR_UNKNOWN_PRODUCT: removed in the meantime.
                1605 => return Ok(None),
                rc => {
                    return Err(format!(
                        "MsiGetProductInfoW({code}, VersionString) failed with {rc}"
                    ));
                }
            }
        }
    }
}

/// After msiexec reported success: the probe must agree (`Err` with the
/// reason otherwise). `want` is the version asked for, if any.
pub fn verify_after(
    mode_install: bool,
    code: &str,
    rc: i32,
    installed: Option<&str>,
    want: Option<&str>,
) -> Result<(), String> {
    match (mode_install, installed, want) {
        (true, None, _) => Err(format!(
            "msiexec reported success (exit {rc}) but product {code} is not installed \
             (not registered as installed: does the package's ProductCode differ from \
             the plan's `product_code`?)"
        )),
        (true, Some(v), Some(w)) if v.trim() != w.trim() => Err(format!(
            "msiexec reported success (exit {rc}) but product {code} is at version {v}, \
             not {w}: after the install, {code} reports version {v}, not {w}; the package \
             is not the one the plan expects (check `package` and `version`)"
        )),
        (false, Some(v), _) => Err(format!(
            "msiexec reported success (exit {rc}) but product {code} is still installed ({v})"
        )),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Step for Msi {
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        let mut checks = crate::preflight::msi::for_step(
            self.mode == Mode::Install,
            self.package.as_deref(),
            crate::preflight::msi::Expected {
                product_code: self.product_code.as_deref(),
                version: self.version.as_deref(),
                upgrade_code: self.upgrade_code.as_deref(),
                properties: self.properties.iter().map(|(k, _)| k.as_str()).collect(),
            },
            self.standin_state.as_deref(),
        );
        if let Some(l) = &self.listens {
            checks.extend(crate::preflight::ports::check(l));
        }
        checks
    }
    fn resources(&self) -> Vec<crate::Resource> {
        match (&self.product_code, &self.package) {
            (Some(code), _) => vec![crate::Resource::product(code)],
            (None, Some(package)) => vec![crate::Resource::product(package.display().to_string())],
            (None, None) => Vec::new(),
        }
    }
    fn describe(&self) -> Vec<String> {
        let log = PathBuf::from("<work dir>/msiexec-<step>.log");
        let mut lines = vec![format!(
            "run: msiexec {}",
            shown_line(&msi_tokens(&self.operation(), &log, &self.properties))
        )];
        if let Some(code) = &self.product_code {
            lines.push(format!(
                "  skipped if {code} is {}",
                match (self.mode, &self.version) {
                    (Mode::Install, Some(v)) => format!("installed at version {v}"),
                    (Mode::Install, None) => "installed".into(),
                    (Mode::Uninstall, _) => "absent".into(),
                }
            ));
        }
        match (
            self.mode,
            &self.product_code,
            &self.package,
            &self.previous_package,
        ) {
            (Mode::Uninstall, _, Some(p), _) => {
                lines.push(format!("  on rollback: reinstall {}", p.display()))
            }
            (Mode::Install, Some(code), _, prev) => lines.push(format!(
                "  on rollback: msiexec /x {code}{}",
                prev.as_ref()
                    .map(|p| format!(", then reinstall {}", p.display()))
                    .unwrap_or_default()
            )),
            _ => {}
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let mut outputs = Outputs::new();
        if let Some(code) = &self.product_code {
            outputs.insert("product_code".into(), code.clone());
        }
        let previous = match self.mode {
            Mode::Install => self.previous_package.clone(),
            Mode::Uninstall => self.package.clone(),
        };
        outputs.insert(
            "previous_package".into(),
            previous
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        );
        if let Probe::InPlace = self.probe(ctx).await? {
            ctx.output("already in place; msiexec not run\n");
            outputs.insert("skipped".into(), "true".into());
            outputs.insert("exit_code".into(), String::new());
            outputs.insert("log".into(), String::new());
            outputs.insert("reboot_required".into(), "false".into());
            return Ok(StepOutcome::with_outputs(outputs));
        }
        let (code, log) = self.exec(ctx, self.operation(), &self.properties).await?;
        let reboot = self.judge(code, &log, self.mode == Mode::Uninstall)?;
        ctx.output(&format!(
            "msiexec exit {code}: {}\n",
            exit_code_meaning(code)
        ));
        outputs.insert("skipped".into(), "false".into());
        outputs.insert("exit_code".into(), code.to_string());
        outputs.insert("log".into(), log.display().to_string());
        outputs.insert("reboot_required".into(), reboot.to_string());
        if let Some(code_id) = &self.product_code {
            // Trust the probe, not only the exit code.
            let installed = installed_version(ctx, code_id, self.standin_state.as_deref()).await?;
            verify_after(
                self.mode == Mode::Install,
                code_id,
                code,
                installed.as_deref(),
                self.version.as_deref(),
            )
            .map_err(StepError::fatal)?;
            if let Some(v) = installed {
                outputs.insert("installed_version".into(), v);
            }
        }
        Ok(StepOutcome {
            outputs,
            reboot_required: reboot,
        })
    }

    fn has_compensation(&self) -> bool {
        match self.mode {
            Mode::Install => self.product_code.is_some() || self.previous_package.is_some(),
            Mode::Uninstall => self.package.is_some(),
        }
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        let rec = ctx.recorded_outputs();
        if rec.get("skipped").map(String::as_str) == Some("true") {
            ctx.output("the step changed nothing (already in place); nothing to undo\n");
            return Ok(());
        }
        if self.mode == Mode::Install
            && let Some(code) = &self.product_code
        {
            let (rc, log) = self
                .exec(ctx, Operation::Uninstall(code.clone()), &[])
                .await?;
            self.judge(rc, &log, true)?;
        }
        let previous = rec
            .get("previous_package")
            .filter(|p| !p.is_empty())
            .cloned()
            .or_else(|| match self.mode {
                Mode::Install => self
                    .previous_package
                    .as_ref()
                    .map(|p| p.display().to_string()),
                Mode::Uninstall => self.package.as_ref().map(|p| p.display().to_string()),
            });
        if let Some(pkg) = previous {
            let (rc, log) = self
                .exec(ctx, Operation::Install(pkg.clone()), &self.properties)
                .await?;
            let reboot = self.judge(rc, &log, false)?;
            ctx.output(&format!(
                "reinstalled {pkg}{}\n",
                if reboot {
                    " (a reboot is required)"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    async fn probe(&self, ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let Some(code) = &self.product_code else {
            return Ok(Probe::Unknown);
        };
        let installed = match self.installed_version(ctx).await {
            Ok(v) => v.flatten(),
            Err(e) => {
                ctx.output(&format!("cannot tell what is installed: {e}\n"));
                return Ok(Probe::Unknown);
            }
        };
        Ok(match (self.mode, installed, &self.version) {
            (Mode::Uninstall, None, _) => Probe::InPlace,
            (Mode::Uninstall, Some(v), _) => Probe::Differs(format!("{code} is installed ({v})")),
            (Mode::Install, None, _) => Probe::Differs(format!("{code} is not installed")),
            (Mode::Install, Some(v), Some(want)) if &v != want => {
                Probe::Differs(format!("{code} is at version {v}, not {want}"))
            }
            (Mode::Install, Some(_), _) => Probe::InPlace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_like_msiexec() {
        let t = msi_tokens(
            &Operation::Install(r"D:\Setup Files\Luware-TM-ICH.msi".into()),
            Path::new(r"C:\ProgramData\upshift\ich.log"),
            &[
                ("INSTALLFOLDER".into(), r"C:\Program Files\Luware AG".into()),
                ("INSTANCENAME".into(), "LUCS".into()),
                ("NOTE".into(), "say \"hi\"".into()),
                ("EMPTY".into(), String::new()),
            ],
        );
        assert_eq!(
            command_line(&t),
            r#"/i "D:\Setup Files\Luware-TM-ICH.msi" /qn /norestart /l*v C:\ProgramData\upshift\ich.log INSTALLFOLDER="C:\Program Files\Luware AG" INSTANCENAME=LUCS NOTE="say ""hi""" EMPTY="""#
        );
        assert_eq!(argv(&t)[6], r"INSTALLFOLDER=C:\Program Files\Luware AG");
    }

    #[test]
    fn utf16_log_is_decoded_and_error_lines_found() {
        let text = "=== Verbose logging started ===\r\nAction start 12:00:00: InstallFiles.\r\nError 1920. Service 'TM ICH' failed to start.\r\nAction ended 12:00:05: InstallFinalize. Return value 3.\r\nMSI (s): Product: x -- Installation failed.\r\n";
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let decoded = decode_log(&bytes);
        assert_eq!(decoded, text);
        let lines = error_lines(&decoded, 2);
        assert_eq!(
            lines,
            [
                "Error 1920. Service 'TM ICH' failed to start.",
                "Action ended 12:00:05: InstallFinalize. Return value 3."
            ]
        );
        assert_eq!(decode_log(text.as_bytes()), text);
    }

    #[test]
    fn tricky_property_values_on_the_windows_command_line() {
        // What msiexec.exe receives verbatim (raw_arg) on Windows.
        let t = msi_tokens(
            &Operation::Install(r"C:\Pkgs & Co\TM 2.0.msi".into()),
            Path::new(r"C:\Temp\a b.log"),
            &[
                ("GREETING".into(), r#"Tom & "Jerry" say hi"#.into()),
                (
                    "INSTALLFOLDER".into(),
                    r"C:\Program Files\Up Shift & Co".into(),
                ),
                ("PLAIN".into(), "a&b".into()),
                ("TRAIL".into(), r"C:\dir\".into()),
            ],
        );
        assert_eq!(
            command_line(&t),
            r#"/i "C:\Pkgs & Co\TM 2.0.msi" /qn /norestart /l*v "C:\Temp\a b.log" GREETING="Tom & ""Jerry"" say hi" INSTALLFOLDER="C:\Program Files\Up Shift & Co" PLAIN=a&b TRAIL=C:\dir\"#
        );
        let spec = spec_for("msiexec.exe", &t);
        assert_eq!(spec.program, "msiexec.exe");
        if cfg!(windows) {
            assert_eq!(
                spec.raw_command_line.as_deref(),
                Some(command_line(&t).as_str())
            );
        } else {
            assert_eq!(spec.raw_command_line, None);
            assert_eq!(spec.args[6], r#"GREETING=Tom & "Jerry" say hi"#);
        }
    }

    #[test]
    fn success_is_checked_against_the_probe() {
        let c = "{12345678-ABCD-1234-abcd-123456789ABC}";
        assert!(verify_after(true, c, 0, Some("2.0.0"), Some("2.0.0")).is_ok());
        assert!(verify_after(true, c, 0, Some("2.0.0"), None).is_ok());
        let e = verify_after(true, c, 0, None, Some("2.0.0")).unwrap_err();
        assert!(e.contains("reported success (exit 0) but product"), "{e}");
        assert!(e.contains("is not installed"), "{e}");
        let e = verify_after(true, c, 3010, Some("1.0.0"), Some("2.0.0")).unwrap_err();
        assert!(e.contains("at version 1.0.0, not 2.0.0"), "{e}");
        assert!(verify_after(false, c, 0, None, None).is_ok());
        assert!(verify_after(false, c, 0, Some("1.0"), None).is_err());
    }

    #[test]
    fn product_codes() {
        assert!(valid_product_code("{12345678-ABCD-1234-abcd-123456789ABC}"));
        assert!(!valid_product_code("12345678-ABCD-1234-abcd-123456789ABC"));
        assert!(!valid_product_code(
            "{12345678-ABCD-1234-abcd-123456789ABZ}"
        ));
        assert_eq!(
            exit_code_meaning(1603),
            "a fatal error occurred during installation"
        );
    }
}
