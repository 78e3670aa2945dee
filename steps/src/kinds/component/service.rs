//! `service`: stops, starts or restarts a service and waits for the state,
//! with a timeout; can set the start type, and records the state and start
//! type found so that compensation can put them back.
//!
//! - **Windows** (`cfg(windows)`): `sc.exe query|qc|start|stop|config`.
//! - **elsewhere**: a systemd unit through `systemctl` (`is-active`,
//!   `is-enabled`, `start|stop|restart`, `enable|disable|mask|unmask`);
//!   `with.systemctl` names another program (tests and the demo use the
//!   stand-in `steps/tests/standins/systemctl`).
//!
//! Both command sets and their output parsers are plain functions compiled
//! on every OS, so the `sc.exe` lines and parsing are unit-tested here too;
//! only the choice of backend is per OS.
//!
//! Parameters: `name`, `action` (`start` | `stop` | `restart`), `timeout`
//! (default `2m`), `poll_interval` (default `1s`), `start_type` (`auto` |
//! `manual` | `disabled`, optional), `systemctl` (non-Windows only).
//! Outputs: `previous_state`, `previous_start_type`, `state`.
//! Probe: the service is in the wanted state (running for start/restart).
//! Compensation: the inverse action (the recorded previous state) and the
//! previous start type.

use std::time::Duration;

use serde::Deserialize;

use super::{decode_lines, encode_lines, run_quiet};
use crate::child::ChildSpec;
use crate::kinds::KindFn;
use crate::params::duration_text;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `service` kind.
pub const KIND: KindFn = KindFn {
    name: "service",
    summary: "stop/start/restart a Windows service (systemd unit elsewhere) and wait for the state",
    build,
    local_paths: &[],
};

/// What to do.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Start (no-op when running).
    Start,
    /// Stop (no-op when stopped).
    Stop,
    /// Stop then start (always acts).
    Restart,
}

/// A service's start type.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartType {
    /// Starts with the machine (Windows AUTO_START, systemd `enabled`).
    Auto,
    /// Started on demand (Windows DEMAND_START, systemd `disabled`).
    Manual,
    /// Cannot start (Windows DISABLED, systemd `masked`).
    Disabled,
}

impl StartType {
    fn as_str(self) -> &'static str {
        match self {
            StartType::Auto => "auto",
            StartType::Manual => "manual",
            StartType::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Option<StartType> {
        match s {
            "auto" => Some(StartType::Auto),
            "manual" => Some(StartType::Manual),
            "disabled" => Some(StartType::Disabled),
            _ => None,
        }
    }
}

/// A service's run state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Running / active.
    Running,
    /// Stopped / inactive.
    Stopped,
    /// On its way somewhere (START_PENDING, activating, ...).
    Pending(String),
    /// Failed (systemd) or paused (Windows): neither running nor stopped.
    Other(String),
}

impl State {
    fn name(&self) -> String {
        match self {
            State::Running => "running".into(),
            State::Stopped => "stopped".into(),
            State::Pending(s) | State::Other(s) => s.clone(),
        }
    }
}

/// The service manager: `sc.exe` or `systemctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Windows service control manager through `sc.exe`.
    Sc {
        /// The program (`sc.exe`).
        program: String,
    },
    /// systemd through `systemctl` (or its stand-in).
    Systemd {
        /// The program (`systemctl` or a stand-in).
        program: String,
    },
}

impl Backend {
    /// The backend of this OS; `systemctl` overrides the program off Windows.
    pub fn for_this_os(systemctl: Option<&str>) -> Backend {
        #[cfg(windows)]
        {
            let _ = systemctl;
            Backend::Sc {
                program: "sc.exe".into(),
            }
        }
        #[cfg(not(windows))]
        {
            Backend::Systemd {
                program: systemctl.unwrap_or("systemctl").to_string(),
            }
        }
    }

    /// The command that reads the state.
    pub fn query(&self, name: &str) -> ChildSpec {
        match self {
            Backend::Sc { program } => ChildSpec::new(program, ["query", name]),
            Backend::Systemd { program } => ChildSpec::new(program, ["is-active", name]),
        }
    }

    /// Parses [`Backend::query`]'s result.
    pub fn parse_state(&self, name: &str, code: i32, out: &str) -> Result<State, String> {
        match self {
            Backend::Sc { .. } => {
                if code == 1060 {
                    return Err(format!("service `{name}` does not exist (sc.exe 1060)"));
                }
                let line = out
                    .lines()
                    .find(|l| l.trim_start().starts_with("STATE"))
                    .ok_or_else(|| {
                        format!(
                            "sc.exe query {name} gave no STATE (exit {code}): {}",
                            out.trim()
                        )
                    })?;
                let word = line
                    .split(':')
                    .nth(1)
                    .and_then(|r| r.split_whitespace().nth(1))
                    .unwrap_or("");
                Ok(match word {
                    "RUNNING" => State::Running,
                    "STOPPED" => State::Stopped,
                    "START_PENDING" | "STOP_PENDING" | "CONTINUE_PENDING" | "PAUSE_PENDING" => {
                        State::Pending(word.to_ascii_lowercase())
                    }
                    other => State::Other(other.to_ascii_lowercase()),
                })
            }
            Backend::Systemd { .. } => {
                let word = out.lines().next().unwrap_or("").trim();
                Ok(match word {
                    "active" | "reloading" => State::Running,
                    "inactive" => State::Stopped,
                    "activating" | "deactivating" => State::Pending(word.into()),
                    "" => return Err(format!("`is-active {name}` printed nothing (exit {code})")),
                    other => State::Other(other.into()),
                })
            }
        }
    }

    /// The commands that start or stop (or, for systemd, restart).
    pub fn act(&self, name: &str, action: Action) -> Vec<ChildSpec> {
        match (self, action) {
            (Backend::Sc { program }, Action::Start) => {
                vec![ChildSpec::new(program, ["start", name])]
            }
            (Backend::Sc { program }, Action::Stop) => {
                vec![ChildSpec::new(program, ["stop", name])]
            }
            (Backend::Sc { program }, Action::Restart) => vec![
                ChildSpec::new(program, ["stop", name]),
                ChildSpec::new(program, ["start", name]),
            ],
            (Backend::Systemd { program }, a) => {
                let verb = match a {
                    Action::Start => "start",
                    Action::Stop => "stop",
                    Action::Restart => "restart",
                };
                vec![ChildSpec::new(program, [verb, name])]
            }
        }
    }

    /// Whether an action's exit code is a success (sc.exe: 1056 "already
    /// running" and 1062 "not started" count as done).
    pub fn action_ok(&self, code: i32) -> bool {
        match self {
            Backend::Sc { .. } => matches!(code, 0 | 1056 | 1062),
            Backend::Systemd { .. } => code == 0,
        }
    }

    /// The command that reads the start type.
    pub fn query_start_type(&self, name: &str) -> ChildSpec {
        match self {
            Backend::Sc { program } => ChildSpec::new(program, ["qc", name]),
            Backend::Systemd { program } => ChildSpec::new(program, ["is-enabled", name]),
        }
    }

    /// Parses [`Backend::query_start_type`]'s output.
    pub fn parse_start_type(&self, out: &str) -> Option<StartType> {
        match self {
            Backend::Sc { .. } => {
                let line = out
                    .lines()
                    .find(|l| l.trim_start().starts_with("START_TYPE"))?;
                let word = line.split(':').nth(1)?.split_whitespace().nth(1)?;
                match word {
                    "AUTO_START" => Some(StartType::Auto),
                    "DEMAND_START" => Some(StartType::Manual),
                    "DISABLED" => Some(StartType::Disabled),
                    _ => None,
                }
            }
            Backend::Systemd { .. } => match out.lines().next()?.trim() {
                "enabled" | "enabled-runtime" => Some(StartType::Auto),
                "disabled" | "static" | "indirect" => Some(StartType::Manual),
                "masked" | "masked-runtime" => Some(StartType::Disabled),
                _ => None,
            },
        }
    }

    /// The commands that set the start type.
    pub fn set_start_type(&self, name: &str, t: StartType) -> Vec<ChildSpec> {
        match self {
            Backend::Sc { program } => {
                let v = match t {
                    StartType::Auto => "auto",
                    StartType::Manual => "demand",
                    StartType::Disabled => "disabled",
                };
                // sc.exe wants `start=` and the value as separate words.
                vec![ChildSpec::new(program, ["config", name, "start=", v])]
            }
            Backend::Systemd { program } => match t {
                StartType::Auto => vec![
                    ChildSpec::new(program, ["unmask", name]),
                    ChildSpec::new(program, ["enable", name]),
                ],
                StartType::Manual => vec![
                    ChildSpec::new(program, ["unmask", name]),
                    ChildSpec::new(program, ["disable", name]),
                ],
                StartType::Disabled => vec![ChildSpec::new(program, ["mask", name])],
            },
        }
    }
}

/// Drives one service: the code shared by `service` and
/// `ich.cleanup_conferences`.
#[derive(Clone, Debug)]
pub struct ServiceCtl {
    /// The service manager.
    pub backend: Backend,
    /// The service (or unit) name.
    pub name: String,
    /// How long to wait for a state.
    pub timeout: Duration,
    /// How often to look.
    pub poll_interval: Duration,
}

impl ServiceCtl {
    /// The current state.
    pub async fn state(&self, ctx: &dyn StepContext) -> Result<State, StepError> {
        let (code, out) = run_quiet(ctx, &self.backend.query(&self.name)).await?;
        self.backend
            .parse_state(&self.name, code, &out)
            .map_err(StepError::fatal)
    }

    /// The current start type (`None` if it cannot be told).
    pub async fn start_type(&self, ctx: &dyn StepContext) -> Result<Option<StartType>, StepError> {
        let (_, out) = run_quiet(ctx, &self.backend.query_start_type(&self.name)).await?;
        Ok(self.backend.parse_start_type(&out))
    }

    async fn run_all(&self, ctx: &dyn StepContext, specs: Vec<ChildSpec>) -> Result<(), StepError> {
        for spec in specs {
            ctx.output(&format!("$ {}\n", spec.display()));
            let (code, out) = run_quiet(ctx, &spec).await?;
            ctx.output(&out);
            if !self.backend.action_ok(code) {
                let hint = match (&self.backend, code) {
                    (Backend::Sc { .. }, 1060) => " (the service does not exist)",
                    (Backend::Sc { .. }, 1058) => " (the service is disabled)",
                    (Backend::Sc { .. }, 1053) => " (the service did not respond in time)",
                    (Backend::Sc { .. }, 5) => " (access denied: run elevated)",
                    (Backend::Systemd { .. }, 5) => " (the unit does not exist)",
                    _ => "",
                };
                return Err(StepError::fatal(format!(
                    "`{}` exited with code {code}{hint}: {}",
                    spec.display(),
                    out.trim()
                )));
            }
        }
        Ok(())
    }

    /// Sets the start type.
    pub async fn set_start_type(
        &self,
        ctx: &dyn StepContext,
        t: StartType,
    ) -> Result<(), StepError> {
        self.run_all(ctx, self.backend.set_start_type(&self.name, t))
            .await
    }

    /// Waits until the service is running (`true`) or stopped (`false`).
    pub async fn wait(&self, ctx: &dyn StepContext, running: bool) -> Result<(), StepError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let s = self.state(ctx).await?;
            match (&s, running) {
                (State::Running, true) | (State::Stopped, false) => return Ok(()),
                (State::Other(o), true) if o == "failed" => {
                    return Err(StepError::fatal(format!(
                        "service `{}` failed to start",
                        self.name
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StepError::transient(format!(
                    "service `{}` is not {} after {} (state: {})",
                    self.name,
                    if running { "running" } else { "stopped" },
                    humantime::format_duration(self.timeout),
                    s.name()
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Brings the service to running (`true`) or stopped (`false`) unless it
    /// is there already; returns whether it acted.
    pub async fn ensure(&self, ctx: &dyn StepContext, running: bool) -> Result<bool, StepError> {
        let s = self.state(ctx).await?;
        let action = match (&s, running) {
            (State::Running, true) | (State::Stopped, false) => return Ok(false),
            (State::Pending(p), true) if p.contains("start") || p == "activating" => None,
            (State::Pending(p), false) if p.contains("stop") || p == "deactivating" => None,
            (_, true) => Some(Action::Start),
            (_, false) => Some(Action::Stop),
        };
        if let Some(a) = action {
            self.run_all(ctx, self.backend.act(&self.name, a)).await?;
        }
        self.wait(ctx, running).await?;
        Ok(true)
    }

    /// Restarts the service and waits until it runs.
    pub async fn restart(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        match &self.backend {
            Backend::Sc { .. } => {
                // sc.exe has no restart: stop, wait, start, wait.
                self.ensure(ctx, false).await?;
                self.ensure(ctx, true).await?;
            }
            Backend::Systemd { .. } => {
                self.run_all(ctx, self.backend.act(&self.name, Action::Restart))
                    .await?;
                self.wait(ctx, true).await?;
            }
        }
        Ok(())
    }
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    action: Action,
    #[serde(default = "two_minutes", with = "duration_text")]
    timeout: Duration,
    #[serde(default = "one_second", with = "duration_text")]
    poll_interval: Duration,
    start_type: Option<StartType>,
    systemctl: Option<String>,
}

struct Service {
    ctl: ServiceCtl,
    action: Action,
    start_type: Option<StartType>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    if p.name.trim().is_empty() || p.name.starts_with('-') {
        return Err(ParamError::field("name", "`name` must be a service name")
            .hint("e.g. name = \"TM-ICH\" (the service name, not its display name)"));
    }
    if p.poll_interval.is_zero() {
        return Err(ParamError::field(
            "poll_interval",
            "`poll_interval` must be above 0",
        ));
    }
    Ok(Box::new(Service {
        ctl: ServiceCtl {
            backend: Backend::for_this_os(p.systemctl.as_deref()),
            name: p.name,
            timeout: p.timeout,
            poll_interval: p.poll_interval,
        },
        action: p.action,
        start_type: p.start_type,
    }))
}

#[async_trait::async_trait]
impl Step for Service {
    fn resources(&self) -> Vec<crate::Resource> {
        vec![crate::Resource::service(&self.ctl.name)]
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(t) = self.start_type {
            for s in self.ctl.backend.set_start_type(&self.ctl.name, t) {
                lines.push(format!("run: {}", s.display()));
            }
        }
        for s in self.ctl.backend.act(&self.ctl.name, self.action) {
            lines.push(format!("run: {}", s.display()));
        }
        lines.push(format!(
            "wait up to {} for `{}` to be {}",
            humantime::format_duration(self.ctl.timeout),
            self.ctl.name,
            if self.action == Action::Stop {
                "stopped"
            } else {
                "running"
            }
        ));
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        // What was there before the first attempt acted (a crashed attempt
        // checkpointed it), so compensation restores the true original.
        let earlier = ctx.resume_from().map(|d| decode_lines(&d));
        let (prev_state, prev_type, acted_before) = match &earlier {
            Some(m) if m.contains_key("previous_state") => (
                m["previous_state"].clone(),
                m.get("previous_start_type").cloned().unwrap_or_default(),
                true,
            ),
            _ => {
                let s = self.ctl.state(ctx).await?.name();
                let t = self
                    .ctl
                    .start_type(ctx)
                    .await?
                    .map_or("unknown".to_string(), |t| t.as_str().to_string());
                ctx.checkpoint(
                    encode_lines(&[
                        ("previous_state", s.clone()),
                        ("previous_start_type", t.clone()),
                    ]),
                    0,
                    1,
                )
                .await?;
                (s, t, false)
            }
        };
        if let Some(t) = self.start_type
            && self.ctl.start_type(ctx).await? != Some(t)
        {
            self.ctl.set_start_type(ctx, t).await?;
        }
        match self.action {
            Action::Start => {
                self.ctl.ensure(ctx, true).await?;
            }
            Action::Stop => {
                self.ctl.ensure(ctx, false).await?;
            }
            // A restart that an earlier attempt already sent need not be
            // repeated: making sure the service runs is enough.
            Action::Restart if acted_before => {
                self.ctl.ensure(ctx, true).await?;
            }
            Action::Restart => self.ctl.restart(ctx).await?,
        }
        let mut outputs = Outputs::new();
        outputs.insert("previous_state".into(), prev_state);
        outputs.insert("previous_start_type".into(), prev_type);
        outputs.insert("state".into(), self.ctl.state(ctx).await?.name());
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        self.action != Action::Restart || self.start_type.is_some()
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        let rec = ctx.recorded_outputs();
        let rec = if rec.contains_key("previous_state") {
            rec
        } else {
            ctx.resume_from()
                .map(|d| decode_lines(&d))
                .unwrap_or_default()
        };
        if let Some(t) = rec
            .get("previous_start_type")
            .and_then(|t| StartType::parse(t))
            && self.ctl.start_type(ctx).await? != Some(t)
        {
            self.ctl.set_start_type(ctx, t).await?;
        }
        match rec.get("previous_state").map(String::as_str) {
            Some("running") => {
                self.ctl.ensure(ctx, true).await?;
            }
            Some("stopped") => {
                self.ctl.ensure(ctx, false).await?;
            }
            other => ctx.output(&format!(
                "previous state {other:?} unknown: leaving `{}` as it is\n",
                self.ctl.name
            )),
        }
        Ok(())
    }

    async fn probe(&self, ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let s = self.ctl.state(ctx).await?;
        let want_running = self.action != Action::Stop;
        let mut diffs = Vec::new();
        if (s == State::Running) != want_running || (!want_running && s != State::Stopped) {
            diffs.push(format!("`{}` is {}", self.ctl.name, s.name()));
        }
        if let Some(t) = self.start_type {
            let now = self.ctl.start_type(ctx).await?;
            if now != Some(t) {
                diffs.push(format!(
                    "start type is {}, not {}",
                    now.map_or("unknown", |t| t.as_str()),
                    t.as_str()
                ));
            }
        }
        Ok(if diffs.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(diffs.join("; "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SC_QUERY: &str = "\r\nSERVICE_NAME: TM-ICH \r\n        TYPE               : 10  WIN32_OWN_PROCESS  \r\n        STATE              : 4  RUNNING \r\n                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)\r\n        WIN32_EXIT_CODE    : 0  (0x0)\r\n";
    const SC_QC: &str = "[SC] QueryServiceConfig SUCCESS\r\n\r\nSERVICE_NAME: TM-ICH\r\n        TYPE               : 10  WIN32_OWN_PROCESS\r\n        START_TYPE         : 2   AUTO_START  (DELAYED)\r\n        ERROR_CONTROL      : 1   NORMAL\r\n";

    #[test]
    fn sc_output_is_parsed() {
        let sc = Backend::Sc {
            program: "sc.exe".into(),
        };
        assert_eq!(sc.parse_state("TM-ICH", 0, SC_QUERY), Ok(State::Running));
        assert_eq!(
            sc.parse_state("x", 0, &SC_QUERY.replace("4  RUNNING", "2  START_PENDING")),
            Ok(State::Pending("start_pending".into()))
        );
        assert!(
            sc.parse_state(
                "x",
                1060,
                "[SC] EnumQueryServicesStatus:OpenService FAILED 1060"
            )
            .unwrap_err()
            .contains("does not exist")
        );
        assert_eq!(sc.parse_start_type(SC_QC), Some(StartType::Auto));
        assert_eq!(
            sc.parse_start_type(&SC_QC.replace("2   AUTO_START  (DELAYED)", "4   DISABLED")),
            Some(StartType::Disabled)
        );
        assert!(sc.action_ok(1056) && sc.action_ok(1062) && !sc.action_ok(1060));
    }

    #[test]
    fn sc_command_lines() {
        let sc = Backend::Sc {
            program: "sc.exe".into(),
        };
        let lines: Vec<String> = sc
            .act("TM-ICH", Action::Restart)
            .iter()
            .chain(sc.set_start_type("TM-ICH", StartType::Manual).iter())
            .map(ChildSpec::display)
            .collect();
        assert_eq!(
            lines,
            [
                "sc.exe stop TM-ICH",
                "sc.exe start TM-ICH",
                "sc.exe config TM-ICH start= demand"
            ]
        );
    }
}
