//! Child processes that never outlive the engine.
//!
//! A step's child (an installer, a script, `sqlcmd`...) must die with the
//! engine, its whole process tree included, so that a resumed run never
//! races a leftover installer of the dead one.
//!
//! - **Linux/Unix**: the engine runs each child under a *guard*: its own
//!   binary (`upshift-guard` beside `upshift`, else `upshift __guard`).
//!   The guard puts the child in a new process group, asks the kernel to
//!   signal it when the engine dies (`PR_SET_PDEATHSIG`, Linux) and also
//!   polls its parent pid; when the engine goes (even by SIGKILL), or when
//!   the engine sends it SIGTERM (timeout, Ctrl-C), it kills the child's
//!   whole group with SIGKILL. It sleeps on a self-pipe woken by those
//!   signals and by the child's SIGCHLD, so it returns as soon as the child
//!   exits. Guards are started ahead of time, one waiting idle while a step
//!   runs, and get their step over their stdin (see [`guarded`]), so a
//!   guard's exec is not paid on the step's critical path. Without a guard
//!   program (unit tests), the child still gets its own group and is
//!   killed as a group when dropped.
//! - **Windows**: each child is started suspended (`CREATE_SUSPENDED`),
//!   assigned to a Job Object with `KILL_ON_JOB_CLOSE`, and only then
//!   resumed, so not even its first instruction runs outside the job (a
//!   child that started a grandchild before being assigned would let that
//!   grandchild escape). The engine holds the only handle, so when the
//!   engine dies or drops the child, Windows kills the tree. Run under Wine
//!   in CI (tests/wine/e2e: SIGKILL of the engine, step timeouts).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{StepContext, StepError};

/// Bytes of stdout kept for the `stdout` output of a step.
pub const STDOUT_KEEP_BYTES: usize = 4096;

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildSpec {
    /// Program (looked up on PATH).
    pub program: String,
    /// Arguments, passed as they are (no shell).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Windows only: the command line after the program, passed verbatim
    /// (`CommandExt::raw_arg`) instead of `args` quoted by the C runtime's
    /// rules; for programs that parse their own line, like msiexec's
    /// `NAME="a b"`. `args` still serve for display and off Windows.
    pub raw_command_line: Option<String>,
}

impl ChildSpec {
    /// A spec for `program args...`.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ChildSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..ChildSpec::default()
        }
    }

    /// The command line as an operator would type it (for dry runs and
    /// error messages): arguments with spaces or quotes are quoted.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| quote_for_display(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn quote_for_display(a: &str) -> String {
    if !a.is_empty()
        && !a
            .chars()
            .any(|c| c.is_whitespace() || "\"'$`\\;&|<>()".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    /// Exit code (on Unix, 128 + signal for a child killed by a signal).
    pub code: i32,
    /// The end of its stdout (at most [`STDOUT_KEEP_BYTES`]).
    pub stdout_tail: String,
}

/// Runs a child to completion, streaming its stdout and stderr into the
/// step's captured output. Dropping the returned future kills the child's
/// whole tree (timeouts and cancellation rely on that).
pub async fn run(ctx: &dyn StepContext, spec: &ChildSpec) -> Result<ChildExit, StepError> {
    let guard = ctx.guard_program();
    #[cfg(unix)]
    if let Some(program) = guard {
        return guarded::run(ctx, spec, program).await;
    }
    let guarded = guard.is_some();
    let mut cmd = platform::command(spec, guard);
    cmd.envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| {
        StepError::fatal(format!(
            "cannot start `{}`: {e}{}",
            spec.program,
            if e.kind() == std::io::ErrorKind::NotFound {
                " (is it installed and on PATH?)"
            } else {
                ""
            }
        ))
    })?;
    let mut killer = platform::Killer::new(&child, guarded);
    if let Err(e) = platform::resume(&child) {
        drop(killer);
        let _ = child.kill().await;
        return Err(StepError::fatal(format!(
            "cannot resume `{}` after putting it in its Job Object: {e}",
            spec.program
        )));
    }
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut tail = String::new();
    let (_, _, status) = tokio::join!(
        pump(stdout, ctx, Some(&mut tail)),
        pump(stderr, ctx, None),
        child.wait()
    );
    killer.disarm();
    let status =
        status.map_err(|e| StepError::fatal(format!("waiting for `{}`: {e}", spec.program)))?;
    Ok(ChildExit {
        code: platform::exit_code(&status),
        stdout_tail: tail,
    })
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    ctx: &dyn StepContext,
    mut keep: Option<&mut String>,
) {
    let mut buf = vec![0u8; 8192];
    // Bytes of a UTF-8 character split across reads.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
        pending.drain(..valid);
        ctx.output(&text);
        if let Some(keep) = keep.as_deref_mut() {
            keep.push_str(&text);
            if keep.len() > 2 * STDOUT_KEEP_BYTES {
                let mut cut = keep.len() - STDOUT_KEEP_BYTES;
                while !keep.is_char_boundary(cut) {
                    cut += 1;
                }
                keep.drain(..cut);
            }
        }
    }
    if !pending.is_empty() {
        ctx.output(&String::from_utf8_lossy(&pending));
    }
    if let Some(keep) = keep
        && keep.len() > STDOUT_KEEP_BYTES
    {
        let mut cut = keep.len() - STDOUT_KEEP_BYTES;
        while !keep.is_char_boundary(cut) {
            cut += 1;
        }
        keep.drain(..cut);
    }
}

/// The argument that tells the guard to read its step from its stdin:
/// `upshift __guard <engine pid> --spec-on-stdin`.
#[cfg(unix)]
pub const SPEC_ON_STDIN: &str = "--spec-on-stdin";

/// Guarded children on Unix: a guard started ahead of time.
///
/// Exec'ing a guard per step put its start-up (~1 ms) on every process
/// step's critical path. Instead one guard per guard program waits idle in
/// advance: `run` takes it (or starts one if there is none), and a
/// replacement is started at once, while the step runs. The step's spec
/// (program, args, env, cwd) travels over the guard's stdin, a socket pair
/// (secrets in `env` never reach a command line or a file); the guard
/// answers [`wire::STARTED`] once it has committed to the spec (before it
/// starts anything), then [`wire::EXITED`] and the exit code. A guard that
/// ends without that answer started nothing, so a fresh one is tried once
/// (an idle guard stopped by a Ctrl-C to the engine's group, say). A guard
/// handed a spec is never reused.
///
/// Every guard is started by one thread that lives as long as the engine
/// process: `PR_SET_PDEATHSIG` fires when the *thread* that forked the
/// guard exits, so a guard started on a blocking-pool thread (which ends
/// after 10 s idle), or on a runtime's worker (which ends with its runtime)
/// would be stopped under a running step or while idle. That thread also
/// reaps guards whose steps were dropped. An idle guard exits at once when
/// its stdin reaches EOF, i.e. when the engine process is gone.
#[cfg(unix)]
mod guarded {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::sync::{Mutex, MutexGuard, OnceLock};
    use std::time::Duration;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::pipe;

    use super::{ChildExit, ChildSpec, pump, wire};
    use crate::{StepContext, StepError};

    /// A started guard that has not been handed a step yet.
    struct Guard {
        program: PathBuf,
        child: Child,
        /// The engine's end of the guard's stdin.
        control: UnixStream,
    }

    /// The idle guards: at most one per guard program.
    static IDLE: Mutex<Vec<Guard>> = Mutex::new(Vec::new());

    /// How often the guard thread checks guards it reaps.
    const REAP_POLL: Duration = Duration::from_millis(20);

    enum Request {
        /// Start a guard now, for a step waiting for it.
        Spawn(PathBuf, tokio::sync::oneshot::Sender<io::Result<Guard>>),
        /// Start an idle guard unless there is one for that program.
        Prespawn(PathBuf),
        /// Reap a guard that was told to stop (or has ended).
        Reap(Child),
    }

    fn idle() -> MutexGuard<'static, Vec<Guard>> {
        IDLE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guard thread's queue (`None` if the thread could not start:
    /// guards are then started on the caller's thread, as before, and
    /// none waits idle).
    fn thread() -> Option<&'static mpsc::Sender<Request>> {
        static THREAD: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
        THREAD
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel();
                std::thread::Builder::new()
                    .name("upshift-guards".into())
                    .spawn(move || serve(rx))
                    .ok()?;
                Some(tx)
            })
            .as_ref()
    }

    fn serve(rx: mpsc::Receiver<Request>) {
        let mut stopping: Vec<Child> = Vec::new();
        loop {
            let request = if stopping.is_empty() {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(REAP_POLL) {
                    Ok(r) => Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            match request {
                Some(Request::Spawn(program, reply)) => {
                    let _ = reply.send(spawn(&program));
                }
                Some(Request::Prespawn(program)) => prespawn(&program),
                Some(Request::Reap(child)) => stopping.push(child),
                None => {}
            }
            stopping.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
    }

    fn prespawn(program: &Path) {
        if idle().iter().any(|g| g.program == program) {
            return;
        }
        match spawn(program) {
            Ok(g) => idle().push(g),
            Err(e) => tracing::debug!("could not start an idle guard `{}`: {e}", program.display()),
        }
    }

    fn request(req: Request) {
        match thread() {
            Some(tx) => {
                let _ = tx.send(req);
            }
            None => {
                if let Request::Spawn(program, reply) = req {
                    let _ = reply.send(spawn(&program));
                }
            }
        }
    }

    /// Starts `program __guard <engine pid> --spec-on-stdin`.
    fn spawn(program: &Path) -> io::Result<Guard> {
        let (control, theirs) = UnixStream::pair()?;
        let child = Command::new(program)
            .arg("__guard")
            .arg(std::process::id().to_string())
            .arg(super::SPEC_ON_STDIN)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Guard {
            program: program.to_path_buf(),
            child,
            control,
        })
    }

    /// The idle guard for `program`, or a new one; either way a replacement
    /// is started in the background.
    async fn take(program: &Path) -> io::Result<Guard> {
        let ready = {
            let mut idle = idle();
            idle.iter()
                .position(|g| g.program == program)
                .map(|i| idle.swap_remove(i))
        };
        let guard = match ready {
            Some(g) => Ok(g),
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                request(Request::Spawn(program.to_path_buf(), tx));
                rx.await
                    .unwrap_or_else(|_| Err(io::Error::other("the guard thread is gone")))
            }
        };
        request(Request::Prespawn(program.to_path_buf()));
        guard
    }

    /// A guard that was handed a step: told to stop (SIGTERM: it kills the
    /// step's group) when dropped unless disarmed, and reaped either way.
    struct Running {
        child: Option<Child>,
        armed: bool,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(child) = self.child.take() {
                if self.armed {
                    // Not reaped yet, so the pid is still the guard's.
                    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                }
                request(Request::Reap(child));
            }
        }
    }

    /// Sends the spec; `Ok` once the guard has committed to it.
    async fn hand(control: UnixStream, message: &[u8]) -> io::Result<tokio::net::UnixStream> {
        control.set_nonblocking(true)?;
        let mut control = tokio::net::UnixStream::from_std(control)?;
        control.write_all(message).await?;
        let mut answer = [0u8; 1];
        control.read_exact(&mut answer).await?;
        if answer[0] != wire::STARTED {
            return Err(io::Error::other("the guard answered garbage"));
        }
        Ok(control)
    }

    /// The child's exit code as the guard reports it; `None` if the guard
    /// ended without reporting.
    async fn exit_report(control: &mut tokio::net::UnixStream) -> Option<i32> {
        let mut m = [0u8; 5];
        control.read_exact(&mut m).await.ok()?;
        (m[0] == wire::EXITED).then(|| i32::from_le_bytes([m[1], m[2], m[3], m[4]]))
    }

    pub async fn run(
        ctx: &dyn StepContext,
        spec: &ChildSpec,
        program: PathBuf,
    ) -> Result<ChildExit, StepError> {
        let message = wire::encode(spec);
        let fatal = |e: io::Error| {
            StepError::fatal(format!(
                "cannot start `{}` under its guard `{}`: {e}",
                spec.program,
                program.display()
            ))
        };
        let mut tries = 0;
        let (mut running, mut control, stdout, stderr) = loop {
            tries += 1;
            let mut guard = take(&program).await.map_err(fatal)?;
            let pipes = (guard.child.stdout.take(), guard.child.stderr.take());
            let running = Running {
                child: Some(guard.child),
                armed: true,
            };
            let (Some(stdout), Some(stderr)) = pipes else {
                return Err(fatal(io::Error::other("the guard's pipes are missing")));
            };
            let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(fatal)?;
            let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr)).map_err(fatal)?;
            match hand(guard.control, &message).await {
                Ok(control) => break (running, control, stdout, stderr),
                // It ended before committing to the spec: nothing ran, and
                // `running` reaps it. Once more with a new guard.
                Err(_) if tries < 2 => continue,
                Err(e) => return Err(fatal(e)),
            }
        };
        let mut tail = String::new();
        let (_, _, reported) = tokio::join!(
            pump(stdout, ctx, Some(&mut tail)),
            pump(stderr, ctx, None),
            exit_report(&mut control)
        );
        let code = match reported {
            Some(code) => code,
            None => {
                // Killed before it could report: its own status says how.
                running.armed = false;
                let Some(mut child) = running.child.take() else {
                    return Err(fatal(io::Error::other("the guard is gone")));
                };
                let status = tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .map_err(|e| fatal(io::Error::other(e)))?
                    .map_err(|e| {
                        StepError::fatal(format!("waiting for `{}`: {e}", spec.program))
                    })?;
                super::platform::exit_code(&status)
            }
        };
        running.armed = false;
        Ok(ChildExit {
            code,
            stdout_tail: tail,
        })
    }
}

/// The guard's stdin protocol (Unix): the engine sends [`MAGIC`], then
/// fields (a tag byte, a little-endian u32 length, the bytes) ending with
/// an empty `Z`; the guard answers [`STARTED`] before it starts the child,
/// and [`EXITED`] with the child's exit code (i32, little-endian) after.
#[cfg(unix)]
mod wire {
    use std::ffi::OsString;
    use std::io::{self, Read};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::PathBuf;

    use super::ChildSpec;

    pub const MAGIC: &[u8; 4] = b"UPG1";
    pub const STARTED: u8 = b'S';
    pub const EXITED: u8 = b'X';
    const PROGRAM: u8 = b'P';
    const ARG: u8 = b'A';
    const ENV_KEY: u8 = b'K';
    const ENV_VALUE: u8 = b'V';
    const CWD: u8 = b'C';
    const END: u8 = b'Z';
    /// No field of a real step comes near this.
    const MAX_FIELD: usize = 64 << 20;

    pub fn encode(spec: &ChildSpec) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let mut out = MAGIC.to_vec();
        field(&mut out, PROGRAM, spec.program.as_bytes());
        for a in &spec.args {
            field(&mut out, ARG, a.as_bytes());
        }
        for (k, v) in &spec.env {
            field(&mut out, ENV_KEY, k.as_bytes());
            field(&mut out, ENV_VALUE, v.as_bytes());
        }
        if let Some(cwd) = &spec.cwd {
            field(&mut out, CWD, cwd.as_os_str().as_bytes());
        }
        field(&mut out, END, b"");
        out
    }

    /// A spec as the guard reads it.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Spec {
        pub program: OsString,
        pub args: Vec<OsString>,
        pub env: Vec<(OsString, OsString)>,
        pub cwd: Option<PathBuf>,
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_string())
    }

    /// `Ok(None)`: end of input before the first byte (the engine ended
    /// without handing a step).
    pub fn decode(r: &mut impl Read) -> io::Result<Option<Spec>> {
        let mut magic = [0u8; 4];
        loop {
            match r.read(&mut magic[..1]) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        r.read_exact(&mut magic[1..])?;
        if &magic != MAGIC {
            return Err(invalid("not an upshift step spec"));
        }
        let mut spec = Spec::default();
        let mut program = None;
        let mut key = None;
        loop {
            let mut head = [0u8; 5];
            r.read_exact(&mut head)?;
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_FIELD {
                return Err(invalid("a field is too long"));
            }
            let mut bytes = vec![0u8; len];
            r.read_exact(&mut bytes)?;
            let value = OsString::from_vec(bytes);
            match head[0] {
                PROGRAM => program = Some(value),
                ARG => spec.args.push(value),
                ENV_KEY => key = Some(value),
                ENV_VALUE => {
                    let k = key
                        .take()
                        .ok_or_else(|| invalid("an env value without key"))?;
                    spec.env.push((k, value));
                }
                CWD => spec.cwd = Some(PathBuf::from(value)),
                END => break,
                _ => return Err(invalid("unknown field")),
            }
        }
        spec.program = program.ok_or_else(|| invalid("no program"))?;
        Ok(Some(spec))
    }
}

#[cfg(unix)]
mod platform {
    use std::path::PathBuf;

    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;

    use super::ChildSpec;

    /// An unguarded child (no guard program: unit tests) leads its own
    /// group; guarded children go through [`super::guarded`].
    pub fn command(spec: &ChildSpec, _guard: Option<PathBuf>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&spec.program);
        c.args(&spec.args).process_group(0);
        c
    }

    /// Kills the child's tree unless disarmed (the child ended on its own).
    /// Only for unguarded children on Unix: the child leads its own group
    /// (guarded ones go through [`super::guarded`]).
    pub struct Killer {
        pid: Option<i32>,
    }

    impl Killer {
        pub fn new(child: &tokio::process::Child, _guarded: bool) -> Killer {
            Killer {
                pid: child.id().map(|p| p as i32),
            }
        }
        pub fn disarm(&mut self) {
            self.pid = None;
        }
    }

    impl Drop for Killer {
        fn drop(&mut self) {
            if let Some(pid) = self.pid {
                // The child and its group; either may already be gone:
                // errors are expected and ignored.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Nothing to do: Unix children are not started suspended.
    pub fn resume(_child: &tokio::process::Child) -> std::io::Result<()> {
        Ok(())
    }

    pub fn exit_code(status: &std::process::ExitStatus) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }
}

#[cfg(windows)]
mod platform {
    use std::path::PathBuf;

    use super::ChildSpec;

    /// `CREATE_SUSPENDED`: the child's first thread waits for [`resume`].
    const CREATE_SUSPENDED: u32 = 0x0000_0004;

    pub fn command(spec: &ChildSpec, _guard: Option<PathBuf>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&spec.program);
        match &spec.raw_command_line {
            Some(line) => {
                c.raw_arg(line);
            }
            None => {
                c.args(&spec.args);
            }
        }
        c.kill_on_drop(true).creation_flags(CREATE_SUSPENDED);
        c
    }

    /// Holds the child's Job Object (KILL_ON_JOB_CLOSE): dropping it, or the
    /// engine dying, kills the whole tree.
    pub struct Killer {
        job: Option<win32job::Job>,
    }

    impl Killer {
        /// Assigns the (still suspended) child to a new job.
        pub fn new(child: &tokio::process::Child, _guarded: bool) -> Killer {
            let job = (|| {
                let mut info = win32job::ExtendedLimitInfo::new();
                info.limit_kill_on_job_close();
                let job = win32job::Job::create_with_limit_info(&info).ok()?;
                let handle = child.raw_handle()?;
                job.assign_process(handle as isize).ok()?;
                Some(job)
            })();
            if job.is_none() {
                tracing::warn!(
                    "could not put the child in a Job Object; it may outlive the engine"
                );
            }
            Killer { job }
        }
        pub fn disarm(&mut self) {
            // The child exited on its own; closing the job also ends anything
            // it left behind in it, as the Unix guard's group kill would not.
            self.job = None;
        }
    }

    /// Resumes the threads of a child started with `CREATE_SUSPENDED` (its
    /// main thread; std does not hand out the thread handle, so the
    /// process's threads are found with a Toolhelp snapshot).
    #[allow(unsafe_code)]
    pub fn resume(child: &tokio::process::Child) -> std::io::Result<()> {
        use windows_sys::Win32::Foundation::{CloseHandle, INVALID_HANDLE_VALUE};
        use windows_sys::Win32::System::Diagnostics::ToolHelp::{
            CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
        };
        use windows_sys::Win32::System::Threading::{
            OpenThread, ResumeThread, THREAD_SUSPEND_RESUME,
        };
        let Some(pid) = child.id() else {
            // Already reaped: nothing to resume.
            return Ok(());
        };
        let mut resumed = 0;
        // SAFETY: plain Win32 calls on handles this function opens and
        // closes itself; `entry` is a properly sized, zeroed THREADENTRY32
        // whose dwSize is set as the API requires.
        unsafe {
            let snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
            if snap == INVALID_HANDLE_VALUE {
                return Err(std::io::Error::last_os_error());
            }
            let mut entry: THREADENTRY32 = std::mem::zeroed();
            entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
            let mut more = Thread32First(snap, &mut entry) != 0;
            while more {
                if entry.th32OwnerProcessID == pid {
                    let thread = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                    if !thread.is_null() {
                        if ResumeThread(thread) != u32::MAX {
                            resumed += 1;
                        }
                        CloseHandle(thread);
                    }
                }
                more = Thread32Next(snap, &mut entry) != 0;
            }
            CloseHandle(snap);
        }
        if resumed == 0 {
            return Err(std::io::Error::other(format!(
                "no thread of process {pid} could be resumed"
            )));
        }
        Ok(())
    }

    pub fn exit_code(status: &std::process::ExitStatus) -> i32 {
        status.code().unwrap_or(-1)
    }
}

/// How often the guard checks that the engine is still its parent, when no
/// signal wakes it: the fallback where `PR_SET_PDEATHSIG` does not exist
/// (other Unixes), or did not fire.
#[cfg(unix)]
pub const GUARD_PARENT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The guard's `main` (Unix), in either form:
/// - `upshift __guard <engine pid> --spec-on-stdin`: the engine's own form
///   (see [`guarded`]): waits for the step on its stdin (exits 0 at once,
///   starting nothing, if the stdin ends first), reports on it;
/// - `upshift __guard <engine pid> -- program args`: the step on the
///   command line (kept for runners and by hand; no env or cwd of its own).
///
/// Returns the exit code to exit with. See the module docs.
#[cfg(unix)]
pub fn guard_main(args: Vec<OsString>) -> i32 {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::{Pid, getppid};

    enum Form {
        Argv(OsString, Vec<OsString>),
        Stdin,
    }
    let mut it = args.into_iter();
    let engine: Option<i32> = it.next().and_then(|a| a.to_str()?.parse().ok());
    let form = match it.next().as_ref().and_then(|a| a.to_str()) {
        Some("--") => it.next().map(|program| Form::Argv(program, it.collect())),
        Some(SPEC_ON_STDIN) => Some(Form::Stdin),
        _ => None,
    };
    let (Some(engine), Some(form)) = (engine, form) else {
        eprintln!(
            "usage: upshift __guard <engine pid> -- program [args...] (internal)\n   or: upshift __guard <engine pid> {SPEC_ON_STDIN} (internal)"
        );
        return 2;
    };
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let stop = Arc::new(AtomicBool::new(false));
    let stops = [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ];
    for sig in stops {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    // A self-pipe (a socket pair: close-on-exec, so the child does not
    // inherit it) that the stop signals and SIGCHLD write to: the loop
    // below sleeps on it. The flag is set before the byte is written, and
    // the loop reads (clears) before it looks at the flag and the child.
    let wake = UnixStream::pair().ok().and_then(|(mut rx, tx)| {
        for sig in stops.into_iter().chain([signal_hook::consts::SIGCHLD]) {
            signal_hook::low_level::pipe::register(sig, tx.try_clone().ok()?).ok()?;
        }
        rx.set_read_timeout(Some(GUARD_PARENT_POLL)).ok()?;
        // Drain the empty probe messages signal-hook may have sent.
        rx.set_nonblocking(true).ok()?;
        while matches!(rx.read(&mut [0u8; 64]), Ok(n) if n > 0) {}
        rx.set_nonblocking(false).ok()?;
        Some(rx)
    });
    if getppid().as_raw() != engine {
        // The engine died before the death signal was armed.
        return 137;
    }
    let (mut command, mut control, program) = match form {
        Form::Argv(program, args) => {
            let mut c = std::process::Command::new(&program);
            c.args(args);
            (c, None, program)
        }
        Form::Stdin => {
            // The engine's end closes when the engine process ends: the
            // read below returns then, whatever the signals did.
            let Ok(mut control) = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(UnixStream::from)
            else {
                return 2;
            };
            let spec = match wire::decode(&mut control) {
                Ok(Some(spec)) => spec,
                // The engine ended without handing a step.
                Ok(None) => return 0,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "upshift guard: bad step spec: {e}");
                    return 2;
                }
            };
            // Told to stop while idle (a Ctrl-C to the engine's group), or
            // the engine is gone: start nothing, say nothing (the engine
            // takes that as "nothing ran").
            if stop.load(Ordering::Relaxed) || getppid().as_raw() != engine {
                return 137;
            }
            if control.write_all(&[wire::STARTED]).is_err() {
                return 137;
            }
            let mut c = std::process::Command::new(&spec.program);
            c.args(&spec.args)
                .envs(spec.env)
                .stdin(std::process::Stdio::null());
            if let Some(cwd) = &spec.cwd {
                c.current_dir(cwd);
            }
            (c, Some(control), spec.program)
        }
    };
    let stdin_form = control.is_some();
    let mut report = |code: i32| {
        if let Some(control) = &mut control {
            let mut m = [wire::EXITED, 0, 0, 0, 0];
            m[1..].copy_from_slice(&code.to_le_bytes());
            let _ = control.write_all(&m);
        }
        code
    };
    let spawned = {
        use std::os::unix::process::CommandExt;
        command.process_group(0).spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "cannot start `{}`: {e}",
                program.to_string_lossy()
            );
            return report(127);
        }
    };
    if stdin_form {
        // The step's pipes are the engine's to close now: they end with
        // the child (and what it left running), not with this guard's
        // exit, which then overlaps the engine's commit.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
            let _ = nix::unistd::dup2_stderr(&null);
        }
    }
    let group = Pid::from_raw(child.id() as i32);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return report(
                    status
                        .code()
                        .or_else(|| status.signal().map(|s| 128 + s))
                        .unwrap_or(1),
                );
            }
            Ok(None) => {}
            Err(_) => return report(1),
        }
        if stop.load(Ordering::Relaxed) || getppid().as_raw() != engine {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            return report(137);
        }
        match &wake {
            // Returns on a signal, or after the poll interval.
            Some(rx) => {
                let mut rx: &UnixStream = rx;
                let _ = rx.read(&mut [0u8; 64]);
            }
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// The guard is not used on Windows (Job Objects do its work).
#[cfg(not(unix))]
pub fn guard_main(_args: Vec<OsString>) -> i32 {
    eprintln!("upshift __guard is only used on Unix");
    2
}

#[cfg(all(test, unix))]
mod wire_tests {
    use super::{ChildSpec, wire};

    #[test]
    fn a_spec_round_trips_and_an_empty_input_is_no_spec() {
        let mut spec = ChildSpec::new("sh", ["-c", "echo \"a b\"", ""]);
        spec.env.insert("K=1".into(), "v\0w ü".into());
        spec.env.insert("EMPTY".into(), String::new());
        spec.cwd = Some("/tmp/with space".into());
        let bytes = wire::encode(&spec);
        let got = wire::decode(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(got.program, "sh");
        assert_eq!(got.args, ["-c", "echo \"a b\"", ""]);
        assert_eq!(
            got.env,
            [("EMPTY".into(), "".into()), ("K=1".into(), "v\0w ü".into())]
        );
        assert_eq!(got.cwd.as_deref(), Some("/tmp/with space".as_ref()));
        assert_eq!(wire::decode(&mut &b""[..]).unwrap(), None);
        // Cut anywhere: an error, never a partial spec.
        for cut in 1..bytes.len() {
            assert!(wire::decode(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(wire::decode(&mut &b"nope-not-a-spec"[..]).is_err());
    }
}
