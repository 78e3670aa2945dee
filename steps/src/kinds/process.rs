//! `process`: runs one command (no shell), captures its output, and judges
//! its exit code.
//!
//! Parameters: `program`, `args` (list), `env` (table), `cwd`,
//! `ok_exit_codes` (default `[0]`), `reboot_exit_codes` (success, but the
//! machine must reboot, e.g. `[3010]`), `transient_exit_codes` (failure a
//! retry may cure). Outputs: `exit_code`, `stdout` (its last 4 KiB, trimmed).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::KindFn;
use crate::child::{self, ChildSpec};
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `process` kind.
pub const KIND: KindFn = KindFn {
    name: "process",
    summary: "run a command: program, args, env, cwd, ok_exit_codes",
    build,
    local_paths: &[crate::LocalPath::any("cwd", true)],
};

fn zero() -> Vec<i32> {
    vec![0]
}

/// Parameters shared by `process` and the body of `foreach`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    #[serde(default = "zero")]
    pub ok_exit_codes: Vec<i32>,
    #[serde(default)]
    pub reboot_exit_codes: Vec<i32>,
    #[serde(default)]
    pub transient_exit_codes: Vec<i32>,
}

impl Params {
    pub fn spec(&self) -> ChildSpec {
        ChildSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            raw_command_line: None,
        }
    }

    pub fn check(&self) -> Result<(), ParamError> {
        if self.program.trim().is_empty() {
            return Err(ParamError::field("program", "`program` is empty")
                .hint("name the executable, e.g. program = \"msiexec\""));
        }
        Ok(())
    }

    /// Judges an exit code: Ok(reboot?) or the failure.
    pub fn judge(&self, spec: &ChildSpec, code: i32) -> Result<bool, StepError> {
        if self.reboot_exit_codes.contains(&code) {
            return Ok(true);
        }
        if self.ok_exit_codes.contains(&code) {
            return Ok(false);
        }
        let message = format!(
            "`{}` exited with code {code} (accepted: {:?})",
            spec.display(),
            self.ok_exit_codes
        );
        Err(StepError::Failed {
            message,
            transient: self.transient_exit_codes.contains(&code),
        })
    }
}

struct Process {
    p: Params,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.check()?;
    Ok(Box::new(Process { p }))
}

#[async_trait::async_trait]
impl Step for Process {
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("run: {}", self.p.spec().display())];
        if let Some(cwd) = &self.p.cwd {
            lines.push(format!("  in: {}", cwd.display()));
        }
        for k in self.p.env.keys() {
            lines.push(format!("  env: {k}=..."));
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let spec = self.p.spec();
        let exit = child::run(ctx, &spec).await?;
        let reboot_required = self.p.judge(&spec, exit.code)?;
        let mut outputs = Outputs::new();
        outputs.insert("exit_code".into(), exit.code.to_string());
        outputs.insert("stdout".into(), exit.stdout_tail.trim().to_string());
        Ok(StepOutcome {
            outputs,
            reboot_required,
        })
    }
}
