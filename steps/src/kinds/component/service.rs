//! `service`: stops, starts or restarts a service and waits for the state,
//! with a timeout; can set the start type, and records the state and start
//! type found so that compensation can put them back.
//!
//! - **Windows** (`cfg(windows)`): the service control manager's API
//!   (`QueryServiceStatus`, `QueryServiceConfigW`, `StartServiceW`,
//!   `ControlService`, `ChangeServiceConfigW`): state and start type are
//!   numbers, not `sc.exe`'s text, which is localized (German/French TM
//!   hosts). Run under Wine in CI against a real test service.
//! - **elsewhere**: a systemd unit through `systemctl` (`is-active`,
//!   `is-enabled`, `start|stop|restart`, `enable|disable|mask|unmask`);
//!   `with.systemctl` names another program (tests and the demo use the
//!   stand-in `steps/tests/standins/systemctl`).
//!
//! The mappings of the SCM's numbers and error codes, the systemctl
//! commands and parsers, and the waiting and deciding are compiled and
//! unit-tested on every OS; only the SCM calls are Windows-only.
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

/// The service manager: the Windows service control manager (through its
/// API) or `systemctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The Windows service control manager, through its API
    /// (`QueryServiceStatus`, `QueryServiceConfigW`, `StartServiceW`,
    /// `ControlService`, `ChangeServiceConfigW`): numbers, never the
    /// localized text of `sc.exe`.
    Scm,
    /// systemd through `systemctl` (or its stand-in).
    Systemd {
        /// The program (`systemctl` or a stand-in).
        program: String,
    },
}

/// A service state from the SCM's `dwCurrentState`.
pub fn scm_state(current_state: u32) -> State {
    match current_state {
        1 => State::Stopped,
        2 => State::Pending("start_pending".into()),
        3 => State::Pending("stop_pending".into()),
        4 => State::Running,
        5 => State::Pending("continue_pending".into()),
        6 => State::Pending("pause_pending".into()),
        7 => State::Other("paused".into()),
        n => State::Other(format!("state {n}")),
    }
}

/// A start type from the SCM's `dwStartType` (boot and system drivers:
/// `None`).
pub fn scm_start_type(start_type: u32) -> Option<StartType> {
    match start_type {
        2 => Some(StartType::Auto),
        3 => Some(StartType::Manual),
        4 => Some(StartType::Disabled),
        _ => None,
    }
}

/// The SCM's `dwStartType` for a start type.
pub fn scm_start_type_code(t: StartType) -> u32 {
    match t {
        StartType::Auto => 2,
        StartType::Manual => 3,
        StartType::Disabled => 4,
    }
}

/// Whether an SCM error of starting/stopping means done already: 1056
/// (ERROR_SERVICE_ALREADY_RUNNING), 1062 (ERROR_SERVICE_NOT_ACTIVE).
pub fn scm_action_ok(code: u32) -> bool {
    matches!(code, 0 | 1056 | 1062)
}

/// What an SCM error code means, for messages.
pub fn scm_error_meaning(code: u32) -> &'static str {
    match code {
        5 => "access denied: run elevated",
        1052 => "the control is not valid for this service",
        1053 => "the service did not respond in time",
        1058 => "the service is disabled",
        1060 => "the service does not exist",
        1061 => "the service cannot accept control messages now",
        1069 => "the service did not start due to a logon failure",
        1072 => "the service is marked for deletion",
        _ => "see the Windows error code",
    }
}

impl Backend {
    /// The backend of this OS; `systemctl` overrides the program off Windows.
    pub fn for_this_os(systemctl: Option<&str>) -> Backend {
        #[cfg(windows)]
        {
            let _ = systemctl;
            Backend::Scm
        }
        #[cfg(not(windows))]
        {
            Backend::Systemd {
                program: systemctl.unwrap_or("systemctl").to_string(),
            }
        }
    }

    /// Parses `systemctl is-active`'s result.
    pub fn parse_systemd_state(name: &str, code: i32, out: &str) -> Result<State, String> {
        let word = out.lines().next().unwrap_or("").trim();
        Ok(match word {
            "active" | "reloading" => State::Running,
            "inactive" => State::Stopped,
            "activating" | "deactivating" => State::Pending(word.into()),
            "" => return Err(format!("`is-active {name}` printed nothing (exit {code})")),
            other => State::Other(other.into()),
        })
    }

    /// Parses `systemctl is-enabled`'s output.
    pub fn parse_systemd_start_type(out: &str) -> Option<StartType> {
        match out.lines().next()?.trim() {
            "enabled" | "enabled-runtime" => Some(StartType::Auto),
            "disabled" | "static" | "indirect" => Some(StartType::Manual),
            "masked" | "masked-runtime" => Some(StartType::Disabled),
            _ => None,
        }
    }

    /// What starting/stopping does, for dry runs: the systemctl commands,
    /// or the SCM calls.
    pub fn describe_act(&self, name: &str, action: Action) -> Vec<String> {
        match self {
            Backend::Scm => match action {
                Action::Start => vec![format!("SCM: StartService {name}")],
                Action::Stop => vec![format!("SCM: ControlService {name} STOP")],
                Action::Restart => vec![
                    format!("SCM: ControlService {name} STOP"),
                    format!("SCM: StartService {name}"),
                ],
            },
            Backend::Systemd { program } => {
                let verb = match action {
                    Action::Start => "start",
                    Action::Stop => "stop",
                    Action::Restart => "restart",
                };
                vec![format!(
                    "run: {}",
                    ChildSpec::new(program, [verb, name]).display()
                )]
            }
        }
    }

    /// What setting the start type does, for dry runs.
    pub fn describe_start_type(&self, name: &str, t: StartType) -> Vec<String> {
        match self {
            Backend::Scm => vec![format!(
                "SCM: ChangeServiceConfig {name} start type {}",
                t.as_str()
            )],
            Backend::Systemd { program } => systemd_start_type(program, name, t)
                .iter()
                .map(|s| format!("run: {}", s.display()))
                .collect(),
        }
    }
}

/// The systemctl commands that set the start type.
fn systemd_start_type(program: &str, name: &str, t: StartType) -> Vec<ChildSpec> {
    match t {
        StartType::Auto => vec![
            ChildSpec::new(program, ["unmask", name]),
            ChildSpec::new(program, ["enable", name]),
        ],
        StartType::Manual => vec![
            ChildSpec::new(program, ["unmask", name]),
            ChildSpec::new(program, ["disable", name]),
        ],
        StartType::Disabled => vec![ChildSpec::new(program, ["mask", name])],
    }
}

/// The service control manager API (Windows only).
#[cfg(windows)]
#[allow(unsafe_code)]
mod scm {
    use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, GetLastError};
    use windows_sys::Win32::System::Services::{
        ChangeServiceConfigW, CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW,
        QUERY_SERVICE_CONFIGW, QueryServiceConfigW, QueryServiceStatus, SC_HANDLE,
        SC_MANAGER_CONNECT, SERVICE_CHANGE_CONFIG, SERVICE_CONTROL_STOP, SERVICE_NO_CHANGE,
        SERVICE_QUERY_CONFIG, SERVICE_QUERY_STATUS, SERVICE_START, SERVICE_STATUS, SERVICE_STOP,
        StartServiceW,
    };

    struct Handle(SC_HANDLE);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: a handle opened by `open` and closed once, here.
            unsafe { CloseServiceHandle(self.0) };
        }
    }

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain([0]).collect()
    }

    /// Opens the service with `access`; `Err(code)` is the Win32 error.
    fn open(name: &str, access: u32) -> Result<Handle, u32> {
        let wname = wide(name);
        // SAFETY: null machine/database names mean the local SCM's active
        // database; `wname` is NUL-terminated and outlives the call; every
        // handle returned is owned by a `Handle` and closed on drop.
        unsafe {
            let manager = OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_CONNECT);
            if manager.is_null() {
                return Err(GetLastError());
            }
            let manager = Handle(manager);
            let service = OpenServiceW(manager.0, wname.as_ptr(), access);
            if service.is_null() {
                return Err(GetLastError());
            }
            Ok(Handle(service))
        }
    }

    /// `dwCurrentState`.
    pub fn state(name: &str) -> Result<u32, u32> {
        let service = open(name, SERVICE_QUERY_STATUS)?;
        // SAFETY: `status` is a plain struct the call fills in.
        unsafe {
            let mut status: SERVICE_STATUS = std::mem::zeroed();
            if QueryServiceStatus(service.0, &mut status) == 0 {
                return Err(GetLastError());
            }
            Ok(status.dwCurrentState)
        }
    }

    /// `dwStartType`.
    pub fn start_type(name: &str) -> Result<u32, u32> {
        let service = open(name, SERVICE_QUERY_CONFIG)?;
        let mut needed = 0u32;
        // SAFETY: the first call only asks for the size (null buffer, 0
        // bytes); the second gets a u64-aligned buffer of at least `needed`
        // bytes, which then holds a QUERY_SERVICE_CONFIGW at its start.
        unsafe {
            if QueryServiceConfigW(service.0, std::ptr::null_mut(), 0, &mut needed) == 0 {
                let e = GetLastError();
                if e != ERROR_INSUFFICIENT_BUFFER {
                    return Err(e);
                }
            }
            let mut buf = vec![0u64; (needed as usize).div_ceil(8).max(8)];
            let bytes = (buf.len() * 8) as u32;
            let config = buf.as_mut_ptr().cast::<QUERY_SERVICE_CONFIGW>();
            if QueryServiceConfigW(service.0, config, bytes, &mut needed) == 0 {
                return Err(GetLastError());
            }
            Ok((*config).dwStartType)
        }
    }

    /// StartServiceW (no arguments).
    pub fn start(name: &str) -> Result<(), u32> {
        let service = open(name, SERVICE_START)?;
        // SAFETY: no service arguments (0, null).
        if unsafe { StartServiceW(service.0, 0, std::ptr::null()) } == 0 {
            return Err(unsafe { GetLastError() });
        }
        Ok(())
    }

    /// ControlService(STOP).
    pub fn stop(name: &str) -> Result<(), u32> {
        let service = open(name, SERVICE_STOP)?;
        // SAFETY: `status` is a plain struct the call fills in.
        unsafe {
            let mut status: SERVICE_STATUS = std::mem::zeroed();
            if ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) == 0 {
                return Err(GetLastError());
            }
        }
        Ok(())
    }

    /// ChangeServiceConfigW: the start type only.
    pub fn set_start_type(name: &str, start_type: u32) -> Result<(), u32> {
        let service = open(name, SERVICE_CHANGE_CONFIG)?;
        let null = std::ptr::null();
        // SAFETY: every other field is "no change" (SERVICE_NO_CHANGE, null).
        let ok = unsafe {
            ChangeServiceConfigW(
                service.0,
                SERVICE_NO_CHANGE,
                start_type,
                SERVICE_NO_CHANGE,
                null,
                null,
                std::ptr::null_mut(),
                null,
                null,
                null,
                null,
            )
        };
        if ok == 0 {
            return Err(unsafe { GetLastError() });
        }
        Ok(())
    }
}

/// An SCM error as a step error.
#[cfg_attr(not(windows), allow(dead_code))]
fn scm_error(name: &str, what: &str, code: u32) -> StepError {
    StepError::fatal(format!(
        "{what} of service `{name}` failed with Windows error {code}: {}",
        scm_error_meaning(code)
    ))
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

/// The SCM exists only on Windows.
#[cfg(not(windows))]
fn no_scm() -> StepError {
    StepError::fatal("the Windows service control manager exists only on Windows")
}

impl ServiceCtl {
    /// The current state.
    pub async fn state(&self, ctx: &dyn StepContext) -> Result<State, StepError> {
        match &self.backend {
            Backend::Scm => {
                #[cfg(windows)]
                {
                    scm::state(&self.name)
                        .map(scm_state)
                        .map_err(|e| scm_error(&self.name, "querying the state", e))
                }
                #[cfg(not(windows))]
                {
                    Err(no_scm())
                }
            }
            Backend::Systemd { program } => {
                let spec = ChildSpec::new(program, ["is-active", &self.name]);
                let (code, out) = run_quiet(ctx, &spec).await?;
                Backend::parse_systemd_state(&self.name, code, &out).map_err(StepError::fatal)
            }
        }
    }

    /// The current start type (`None` if it cannot be told).
    pub async fn start_type(&self, ctx: &dyn StepContext) -> Result<Option<StartType>, StepError> {
        match &self.backend {
            Backend::Scm => {
                #[cfg(windows)]
                {
                    scm::start_type(&self.name)
                        .map(scm_start_type)
                        .map_err(|e| scm_error(&self.name, "querying the start type", e))
                }
                #[cfg(not(windows))]
                {
                    Err(no_scm())
                }
            }
            Backend::Systemd { program } => {
                let spec = ChildSpec::new(program, ["is-enabled", &self.name]);
                let (_, out) = run_quiet(ctx, &spec).await?;
                Ok(Backend::parse_systemd_start_type(&out))
            }
        }
    }

    async fn run_all(&self, ctx: &dyn StepContext, specs: Vec<ChildSpec>) -> Result<(), StepError> {
        for spec in specs {
            ctx.output(&format!("$ {}\n", spec.display()));
            let (code, out) = run_quiet(ctx, &spec).await?;
            ctx.output(&out);
            if code != 0 {
                let hint = if code == 5 {
                    " (the unit does not exist)"
                } else {
                    ""
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

    /// Starts or stops once (no waiting; `Restart` only for systemd).
    async fn act(&self, ctx: &dyn StepContext, action: Action) -> Result<(), StepError> {
        match &self.backend {
            Backend::Scm => {
                for line in self.backend.describe_act(&self.name, action) {
                    ctx.output(&format!("{line}\n"));
                }
                #[cfg(windows)]
                {
                    let (what, r) = match action {
                        Action::Start => ("starting", scm::start(&self.name)),
                        Action::Stop => ("stopping", scm::stop(&self.name)),
                        Action::Restart => unreachable!("restart is stop + start on the SCM"),
                    };
                    match r {
                        Ok(()) => Ok(()),
                        Err(e) if scm_action_ok(e) => Ok(()),
                        Err(e) => Err(scm_error(&self.name, what, e)),
                    }
                }
                #[cfg(not(windows))]
                {
                    Err(no_scm())
                }
            }
            Backend::Systemd { program } => {
                let verb = match action {
                    Action::Start => "start",
                    Action::Stop => "stop",
                    Action::Restart => "restart",
                };
                self.run_all(ctx, vec![ChildSpec::new(program, [verb, &self.name])])
                    .await
            }
        }
    }

    /// Sets the start type.
    pub async fn set_start_type(
        &self,
        ctx: &dyn StepContext,
        t: StartType,
    ) -> Result<(), StepError> {
        match &self.backend {
            Backend::Scm => {
                for line in self.backend.describe_start_type(&self.name, t) {
                    ctx.output(&format!("{line}\n"));
                }
                #[cfg(windows)]
                {
                    scm::set_start_type(&self.name, scm_start_type_code(t))
                        .map_err(|e| scm_error(&self.name, "setting the start type", e))
                }
                #[cfg(not(windows))]
                {
                    Err(no_scm())
                }
            }
            Backend::Systemd { program } => {
                self.run_all(ctx, systemd_start_type(program, &self.name, t))
                    .await
            }
        }
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
            self.act(ctx, a).await?;
        }
        self.wait(ctx, running).await?;
        Ok(true)
    }

    /// Restarts the service and waits until it runs.
    pub async fn restart(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        match &self.backend {
            Backend::Scm => {
                // The SCM has no restart: stop, wait, start, wait.
                self.ensure(ctx, false).await?;
                self.ensure(ctx, true).await?;
            }
            Backend::Systemd { .. } => {
                self.act(ctx, Action::Restart).await?;
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
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        vec![crate::preflight::windows::service(&self.ctl.name)]
    }
    fn resources(&self) -> Vec<crate::Resource> {
        vec![crate::Resource::service(&self.ctl.name)]
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(t) = self.start_type {
            lines.extend(self.ctl.backend.describe_start_type(&self.ctl.name, t));
        }
        lines.extend(self.ctl.backend.describe_act(&self.ctl.name, self.action));
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

    #[test]
    fn scm_numbers_are_mapped() {
        assert_eq!(scm_state(4), State::Running);
        assert_eq!(scm_state(1), State::Stopped);
        assert_eq!(scm_state(2), State::Pending("start_pending".into()));
        assert_eq!(scm_state(3), State::Pending("stop_pending".into()));
        assert_eq!(scm_state(7), State::Other("paused".into()));
        for t in [StartType::Auto, StartType::Manual, StartType::Disabled] {
            assert_eq!(scm_start_type(scm_start_type_code(t)), Some(t));
        }
        assert_eq!(scm_start_type(0), None);
        assert!(scm_action_ok(1056) && scm_action_ok(1062) && !scm_action_ok(1060));
        assert_eq!(scm_error_meaning(1060), "the service does not exist");
    }

    #[test]
    fn dry_run_lines() {
        let lines: Vec<String> = Backend::Scm
            .describe_act("TM-ICH", Action::Restart)
            .into_iter()
            .chain(Backend::Scm.describe_start_type("TM-ICH", StartType::Manual))
            .collect();
        assert_eq!(
            lines,
            [
                "SCM: ControlService TM-ICH STOP",
                "SCM: StartService TM-ICH",
                "SCM: ChangeServiceConfig TM-ICH start type manual"
            ]
        );
        let sd = Backend::Systemd {
            program: "systemctl".into(),
        };
        assert_eq!(
            sd.describe_start_type("x", StartType::Disabled),
            ["run: systemctl mask x"]
        );
    }
}
