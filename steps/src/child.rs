//! Child processes that never outlive the engine.
//!
//! A step's child (an installer, a script, `sqlcmd`...) must die with the
//! engine, its whole process tree included, so that a resumed run never
//! races a leftover installer of the dead one.
//!
//! - **Linux/Unix**: the engine runs each child under a *guard*: its own
//!   binary, `upshift __guard <engine pid> -- program args...`. The guard
//!   puts the child in a new process group, asks the kernel to signal it
//!   when the engine dies (`PR_SET_PDEATHSIG`, Linux) and also polls its
//!   parent pid; when the engine goes (even by SIGKILL), or when the engine
//!   sends it SIGTERM (timeout, Ctrl-C), it kills the child's whole group
//!   with SIGKILL. It sleeps on a self-pipe woken by those signals and by
//!   the child's SIGCHLD, so it returns as soon as the child exits (it
//!   polled every 10 ms before: 5 ms per step on average). Without a guard program (unit tests), the child still gets
//!   its own group and is killed as a group when dropped.
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

#[cfg(unix)]
mod platform {
    use std::path::PathBuf;

    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;

    use super::ChildSpec;

    pub fn command(spec: &ChildSpec, guard: Option<PathBuf>) -> tokio::process::Command {
        match guard {
            Some(guard) => {
                let mut c = tokio::process::Command::new(guard);
                c.arg("__guard")
                    .arg(std::process::id().to_string())
                    .arg("--")
                    .arg(&spec.program)
                    .args(&spec.args);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(&spec.program);
                c.args(&spec.args).process_group(0);
                c
            }
        }
    }

    /// Kills the child's tree unless disarmed (the child ended on its own).
    pub struct Killer {
        pid: Option<i32>,
        guarded: bool,
    }

    impl Killer {
        /// With a guard, the direct child is the guard (in the engine's
        /// process group); without one, the child leads its own group.
        pub fn new(child: &tokio::process::Child, guarded: bool) -> Killer {
            Killer {
                pid: child.id().map(|p| p as i32),
                guarded,
            }
        }
        pub fn disarm(&mut self) {
            self.pid = None;
        }
    }

    impl Drop for Killer {
        fn drop(&mut self) {
            if let Some(pid) = self.pid {
                // SIGTERM to a guard makes it SIGKILL the child's group; a
                // bare child's group is killed directly. Either may already
                // be gone: errors are expected and ignored.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if !self.guarded {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
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

/// The guard's `main` (Unix): `upshift __guard <engine pid> -- program args`.
/// Returns the exit code to exit with. See the module docs.
#[cfg(unix)]
pub fn guard_main(args: Vec<OsString>) -> i32 {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::{Pid, getppid};

    let mut it = args.into_iter();
    let engine: Option<i32> = it.next().and_then(|a| a.to_str()?.parse().ok());
    let sep = it.next();
    let program = it.next();
    let (Some(engine), Some(_), Some(program)) = (engine, sep, program) else {
        eprintln!("usage: upshift __guard <engine pid> -- program [args...] (internal)");
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
    let spawned = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&program)
            .args(it)
            .process_group(0)
            .spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start `{}`: {e}", program.to_string_lossy());
            return 127;
        }
    };
    let group = Pid::from_raw(child.id() as i32);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1);
            }
            Ok(None) => {}
            Err(_) => return 1,
        }
        if stop.load(Ordering::Relaxed) || getppid().as_raw() != engine {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            return 137;
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
