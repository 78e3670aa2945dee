//! `powershell`: runs a script file or an inline script with
//! `-NoProfile -NonInteractive -ExecutionPolicy Bypass`, passing arguments
//! as parameters, never as script text.
//!
//! **How arguments travel.** An inline script is written to a `.ps1` file in
//! the step's work folder (UTF-8 with BOM, which Windows PowerShell 5.1
//! needs). PowerShell is then started with `-EncodedCommand` and a fixed
//! launcher (base64 of UTF-16LE, so no quoting layer at all) that reads every
//! argument from an environment variable of the child (`UPSHIFT_PS_ARG_<i>`
//! for positional ones, `UPSHIFT_PS_NAMED_<Name>` for named ones) and
//! splats them into `& '<script.ps1>'`. Argument values therefore never
//! appear on a command line or in script text: they cannot be parsed as
//! code, and there is no Windows command-line quoting to get wrong. The only
//! things in the launcher text are the script path (single-quoted, quotes
//! doubled) and parameter names (checked to be identifiers).
//!
//! Parameters: `script` (inline) or `script_file`, `params` (table of named
//! parameters; values are passed as strings), `args` (list of positional
//! arguments), `ok_exit_codes` (default `[0]`), `program` (default
//! `powershell.exe` on Windows, `pwsh` elsewhere; tests use the stand-in
//! `steps/tests/standins/pwsh`), `compensate_script` (optional inline script
//! run, with the same arguments, on rollback). Outputs: `exit_code`,
//! `stdout` (last 4 KiB).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::appsettings::SettingValue;
use crate::child::{self, ChildSpec};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `powershell` kind.
pub const KIND: KindFn = KindFn {
    name: "powershell",
    summary: "run an inline or file PowerShell script; arguments passed as parameters, never as code",
    build,
    local_paths: &[crate::LocalPath::input("script_file", false)],
};

/// The PowerShell program of this OS.
pub fn default_program() -> &'static str {
    if cfg!(windows) {
        "powershell.exe"
    } else {
        "pwsh"
    }
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The value of `-EncodedCommand` for `script`: base64 of UTF-16LE.
pub fn encode_command(script: &str) -> String {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64(&utf16)
}

/// A PowerShell single-quoted string literal. PowerShell also treats the
/// typographic quotes U+2018..U+201B as single quotes, so those are doubled
/// as well.
pub fn single_quoted(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Whether `name` can be a PowerShell parameter name (and an environment
/// variable suffix).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Environment variable prefix of positional arguments.
pub const ARG_PREFIX: &str = "UPSHIFT_PS_ARG_";
/// Environment variable prefix of named arguments.
pub const NAMED_PREFIX: &str = "UPSHIFT_PS_NAMED_";

/// One PowerShell run: a script file and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `powershell.exe`, `pwsh`, or a stand-in.
    pub program: String,
    /// The `.ps1` to run.
    pub script_path: PathBuf,
    /// Named parameters (names checked with [`valid_name`]).
    pub named: Vec<(String, String)>,
    /// Positional arguments.
    pub positional: Vec<String>,
}

impl Invocation {
    /// The launcher script (what `-EncodedCommand` carries). It holds no
    /// argument value.
    pub fn launcher(&self) -> String {
        let names = self
            .named
            .iter()
            .map(|(n, _)| single_quoted(n))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "$ErrorActionPreference = 'Stop'\n\
             $upshiftNamed = @{{}}\n\
             foreach ($n in @({names})) {{ $upshiftNamed[$n] = [string][Environment]::GetEnvironmentVariable('{NAMED_PREFIX}' + $n) }}\n\
             $upshiftArgs = @()\n\
             for ($i = 0; $i -lt {count}; $i++) {{ $upshiftArgs += ,[string][Environment]::GetEnvironmentVariable('{ARG_PREFIX}' + $i) }}\n\
             $global:LASTEXITCODE = 0\n\
             & {path} @upshiftArgs @upshiftNamed\n\
             exit $LASTEXITCODE\n",
            count = self.positional.len(),
            path = single_quoted(&self.script_path.display().to_string()),
        )
    }

    /// The child to start: fixed flags, the encoded launcher, and the
    /// arguments in the environment.
    pub fn spec(&self) -> ChildSpec {
        let mut spec = ChildSpec::new(
            &self.program,
            [
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-EncodedCommand",
            ],
        );
        spec.args.push(encode_command(&self.launcher()));
        for (i, a) in self.positional.iter().enumerate() {
            spec.env.insert(format!("{ARG_PREFIX}{i}"), a.clone());
        }
        for (n, v) in &self.named {
            spec.env.insert(format!("{NAMED_PREFIX}{n}"), v.clone());
        }
        spec
    }

    /// How a dry run shows it (argument values of secret-looking names
    /// hidden).
    pub fn display(&self) -> String {
        let mut s = format!(
            "{} -NoProfile -NonInteractive -ExecutionPolicy Bypass -File {}",
            self.program,
            self.script_path.display()
        );
        for a in &self.positional {
            s.push_str(&format!(" {a:?}"));
        }
        for (n, v) in &self.named {
            s.push_str(&format!(" -{n} {}", super::shown_value(n, v)));
        }
        s
    }
}

/// Writes an inline script into `dir` (named by its hash, so re-runs reuse
/// it) as UTF-8 with BOM; returns its path.
pub fn write_inline(dir: &Path, stem: &str, script: &str) -> Result<PathBuf, StepError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", dir.display())))?;
    let hash = hex::encode(&Sha256::digest(script.as_bytes())[..8]);
    let path = dir.join(format!("{stem}-{hash}.ps1"));
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(script.as_bytes());
    if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        super::atomic_write(&path, &bytes)?;
    }
    Ok(path)
}

/// Runs an invocation; returns the exit code and stdout tail.
pub async fn run(ctx: &dyn StepContext, inv: &Invocation) -> Result<child::ChildExit, StepError> {
    child::run(ctx, &inv.spec()).await
}

fn zero() -> Vec<i32> {
    vec![0]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    script: Option<String>,
    script_file: Option<PathBuf>,
    #[serde(default)]
    params: BTreeMap<String, SettingValue>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "zero")]
    ok_exit_codes: Vec<i32>,
    program: Option<String>,
    compensate_script: Option<String>,
}

enum Source {
    Inline(String),
    File(PathBuf),
}

struct PowerShell {
    source: Source,
    compensate: Option<String>,
    program: String,
    named: Vec<(String, String)>,
    positional: Vec<String>,
    ok_exit_codes: Vec<i32>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let source = match (p.script, p.script_file) {
        (Some(s), None) => Source::Inline(s),
        (None, Some(f)) => Source::File(f),
        _ => {
            return Err(ParamError::field(
                "script",
                "give exactly one of `script` and `script_file`",
            )
            .hint("script = \"param($Name) Write-Output $Name\", params = { Name = \"x\" }"));
        }
    };
    for n in p.params.keys() {
        if !valid_name(n) {
            return Err(ParamError::field(
                "params",
                format!("`{n}` is not a PowerShell parameter name (letters, digits, _)"),
            ));
        }
    }
    Ok(Box::new(PowerShell {
        source,
        compensate: p.compensate_script,
        program: p.program.unwrap_or_else(|| default_program().to_string()),
        named: p.params.into_iter().map(|(k, v)| (k, v.0)).collect(),
        positional: p.args,
        ok_exit_codes: p.ok_exit_codes,
    }))
}

impl PowerShell {
    fn invocation(&self, script_path: PathBuf) -> Invocation {
        Invocation {
            program: self.program.clone(),
            script_path,
            named: self.named.clone(),
            positional: self.positional.clone(),
        }
    }

    fn script_path(
        &self,
        ctx: &dyn StepContext,
        stem: &str,
        inline: Option<&str>,
    ) -> Result<PathBuf, StepError> {
        match (inline, &self.source) {
            (Some(s), _) => write_inline(&ctx.work_dir(), stem, s),
            (None, Source::Inline(s)) => write_inline(&ctx.work_dir(), stem, s),
            (None, Source::File(f)) => {
                if !f.is_file() {
                    return Err(StepError::fatal(format!(
                        "script file {} not found",
                        f.display()
                    )));
                }
                Ok(f.clone())
            }
        }
    }
}

#[async_trait::async_trait]
impl Step for PowerShell {
    fn describe(&self) -> Vec<String> {
        let path = match &self.source {
            Source::Inline(_) => PathBuf::from("<work dir>/<step>-<hash>.ps1"),
            Source::File(f) => f.clone(),
        };
        let mut lines = vec![format!("run: {}", self.invocation(path).display())];
        if let Source::Inline(s) = &self.source {
            for l in s.lines().take(20) {
                lines.push(format!("  | {l}"));
            }
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let path = self.script_path(ctx, ctx.step_id(), None)?;
        let inv = self.invocation(path);
        let exit = run(ctx, &inv).await?;
        if !self.ok_exit_codes.contains(&exit.code) {
            return Err(StepError::fatal(format!(
                "PowerShell script {} exited with code {} (accepted: {:?}); output ends: {}",
                inv.script_path.display(),
                exit.code,
                self.ok_exit_codes,
                exit.stdout_tail.trim()
            )));
        }
        let mut outputs = Outputs::new();
        outputs.insert("exit_code".into(), exit.code.to_string());
        outputs.insert("stdout".into(), exit.stdout_tail.trim().to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        self.compensate.is_some()
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        let Some(script) = &self.compensate else {
            return Ok(());
        };
        let stem = format!("{}-compensate", ctx.step_id());
        let inv = self.invocation(self.script_path(ctx, &stem, Some(script))?);
        let exit = run(ctx, &inv).await?;
        if !self.ok_exit_codes.contains(&exit.code) {
            return Err(StepError::fatal(format!(
                "compensation script exited with code {}",
                exit.code
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        // PowerShell's own example: -EncodedCommand of "dir" is ZABpAHIA.
        assert_eq!(encode_command("dir"), "ZABpAHIA");
    }

    #[test]
    fn single_quotes_are_doubled_including_typographic_ones() {
        assert_eq!(
            single_quoted("C:\\a'b\u{2019}c"),
            "'C:\\a''b\u{2019}\u{2019}c'"
        );
    }

    #[test]
    fn injection_stays_data() {
        let evil = "'; Remove-Item C:\\ -Recurse; '";
        let inv = Invocation {
            program: "powershell.exe".into(),
            script_path: PathBuf::from("C:\\ProgramData\\upshift\\work\\s-1.ps1"),
            named: vec![("Sip".into(), evil.into())],
            positional: vec![evil.into()],
        };
        let spec = inv.spec();
        assert_eq!(
            spec.args[..5],
            [
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-EncodedCommand"
            ]
        );
        assert_eq!(spec.args.len(), 6);
        assert!(
            spec.args[5]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        );
        assert!(!inv.launcher().contains("Remove-Item"));
        assert_eq!(spec.env["UPSHIFT_PS_NAMED_Sip"], evil);
        assert_eq!(spec.env["UPSHIFT_PS_ARG_0"], evil);
        assert!(
            inv.launcher()
                .contains("& 'C:\\ProgramData\\upshift\\work\\s-1.ps1' @upshiftArgs @upshiftNamed")
        );
    }
}
