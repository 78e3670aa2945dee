//! How the coordinator reaches a host: start a command there with piped
//! stdin/stdout/stderr, copy a file there, and tell its own failures (host
//! key, login, network) from the command's.
//!
//! Two implementations: [`local::LocalTransport`] (the coordinator itself,
//! and tests without sshd) and [`ssh::SshTransport`] (the system OpenSSH
//! client). WinRM could be a third behind the same trait.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::RemoteError;

pub mod local;
pub mod ssh;

/// Bytes of a command's stderr kept for error messages.
pub const STDERR_KEEP_BYTES: usize = 16 * 1024;

/// The host's operating system family, as far as paths and the remote
/// shell are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    /// POSIX paths, `sh` as the login shell.
    Unix,
    /// Drive-letter paths, `cmd.exe` as the OpenSSH default shell.
    Windows,
}

impl HostOs {
    /// The OS of this machine.
    pub fn current() -> HostOs {
        if cfg!(windows) {
            HostOs::Windows
        } else {
            HostOs::Unix
        }
    }

    /// Windows if the work folder starts with a drive letter
    /// (`C:/...`, `C:\...`), else Unix: the plan's `work_dir` says which.
    pub fn of_work_dir(work_dir: &str) -> HostOs {
        let b = work_dir.as_bytes();
        if b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'/' | b'\\')
        {
            HostOs::Windows
        } else {
            HostOs::Unix
        }
    }

    /// The path separator on the host.
    pub fn sep(self) -> char {
        match self {
            HostOs::Unix => '/',
            HostOs::Windows => '\\',
        }
    }

    /// `base` joined with `parts`, in the host's syntax.
    pub fn join(self, base: &str, parts: &[&str]) -> String {
        let mut out = match self {
            HostOs::Windows => base.replace('/', "\\"),
            HostOs::Unix => base.to_string(),
        };
        for p in parts {
            if !out.ends_with(self.sep()) {
                out.push(self.sep());
            }
            out.push_str(p);
        }
        out
    }

    /// The file name of the upshift binary on the host.
    pub fn exe_name(self) -> &'static str {
        match self {
            HostOs::Unix => "upshift",
            HostOs::Windows => "upshift.exe",
        }
    }
}

/// A command to run on the host: a program and its arguments, no shell
/// syntax. Transports quote it for whatever runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    /// The program (a path on the host).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// A command started on the host. Dropping it kills the local end (the
/// `ssh` process, or the local child); what the command started detached
/// is not affected.
pub struct RemoteChild {
    /// The command's stdin.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The command's stdout.
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The command's stderr (for ssh: mixed with the client's own messages).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    child: tokio::process::Child,
}

impl RemoteChild {
    fn from_child(mut child: tokio::process::Child) -> RemoteChild {
        RemoteChild {
            stdin: child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
            stdout: child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            stderr: child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            child,
        }
    }

    /// Waits for the local end to exit; its exit code (on Unix, 128 +
    /// signal for a signal).
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        let status = self.child.wait().await?;
        Ok(exit_code(&status))
    }

    /// Kills the local end (the connection, for ssh).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// The local process id (the `ssh` client's, for ssh).
    pub fn local_pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code.
    pub code: i32,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// The end of its stderr (at most [`STDERR_KEEP_BYTES`]).
    pub stderr: String,
}

/// A way to run commands on one host.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// The host's name in the plan (every error names it).
    fn host(&self) -> &str;

    /// The host's OS family.
    fn os(&self) -> HostOs;

    /// How the host is reached, for messages (`ssh admin@10.0.0.5:22`).
    fn describe(&self) -> String;

    /// Checks, within the connect timeout, that the host answers, shows
    /// the known host key and accepts the login.
    async fn connect(&self) -> Result<(), RemoteError>;

    /// Starts a command with piped stdin, stdout and stderr.
    async fn spawn(&self, cmd: &RemoteCommand) -> Result<RemoteChild, RemoteError>;

    /// Whether a command that exited with `code` and printed `stderr`
    /// failed because of the transport (host key, login, network) rather
    /// than the command; if so, the error.
    fn failure(&self, code: i32, stderr: &str) -> Option<RemoteError>;

    /// Copies a local file to `remote` (a path on the host), creating the
    /// folders; the file appears complete or not at all (temporary name,
    /// then rename).
    async fn copy_file(&self, local: &Path, remote: &str) -> Result<(), RemoteError>;

    /// Releases what the transport holds (nothing today: each command's
    /// connection ends with it).
    async fn close(&self) {}

    /// Runs a command to the end with `stdin` as its input, within
    /// `timeout`; a transport failure is returned as the error.
    async fn run(
        &self,
        cmd: &RemoteCommand,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let child = self.spawn(cmd).await?;
        let what = format!("{} {}", cmd.program, cmd.args.join(" "));
        let (stdout, stderr, code) = finish(self.host(), &what, child, stdin, timeout).await?;
        if let Some(e) = self.failure(code, &stderr) {
            return Err(e);
        }
        Ok(CommandOutput {
            code,
            stdout,
            stderr,
        })
    }
}

/// Feeds `stdin` to a started command, reads its stdout and the tail of
/// its stderr, and waits for it, within `timeout`: (stdout, stderr, code).
pub(crate) async fn finish(
    host: &str,
    what: &str,
    mut child: RemoteChild,
    stdin: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, String, i32), RemoteError> {
    let mut input = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let feed = async {
            if let Some(w) = input.as_mut() {
                let _ = w.write_all(stdin).await;
                let _ = w.shutdown().await;
            }
            drop(input.take());
        };
        let (_, stdout, stderr) = tokio::join!(feed, read_all(&mut out), read_tail(&mut err));
        let code = child.wait().await;
        (stdout, stderr, code)
    };
    let (stdout, stderr, code) =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RemoteError::Timeout {
                host: host.to_string(),
                what: what.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            })?;
    let code = code.map_err(|e| RemoteError::Io {
        host: host.to_string(),
        what: format!("waiting for `{what}`"),
        detail: e.to_string(),
    })?;
    Ok((stdout, stderr, code))
}

async fn read_all(r: &mut Option<Box<dyn AsyncRead + Send + Unpin>>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(r) = r.as_mut() {
        let _ = r.read_to_end(&mut v).await;
    }
    v
}

/// Reads a stream to its end, keeping the last [`STDERR_KEEP_BYTES`].
pub(crate) async fn read_tail(r: &mut Option<Box<dyn AsyncRead + Send + Unpin>>) -> String {
    let mut keep: Vec<u8> = Vec::new();
    if let Some(r) = r.as_mut() {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    keep.extend_from_slice(&buf[..n]);
                    if keep.len() > 2 * STDERR_KEEP_BYTES {
                        keep.drain(..keep.len() - STDERR_KEEP_BYTES);
                    }
                }
            }
        }
    }
    if keep.len() > STDERR_KEEP_BYTES {
        keep.drain(..keep.len() - STDERR_KEEP_BYTES);
    }
    String::from_utf8_lossy(&keep).into_owned()
}

/// A `tokio` command with piped stdio that dies with its handle.
pub(crate) fn piped(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own process group: a Ctrl-C meant for the coordinator must not
    // cut every host's connection before the coordinator decides.
    #[cfg(unix)]
    c.process_group(0);
    c
}

pub(crate) fn exit_code(status: &std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }
    #[cfg(not(unix))]
    {
        status.code().unwrap_or(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_dir_tells_the_os() {
        assert_eq!(
            HostOs::of_work_dir("C:/ProgramData/upshift-remote"),
            HostOs::Windows
        );
        assert_eq!(HostOs::of_work_dir("d:\\x"), HostOs::Windows);
        assert_eq!(HostOs::of_work_dir("/var/lib/upshift"), HostOs::Unix);
        assert_eq!(HostOs::of_work_dir("C:"), HostOs::Unix);
        assert_eq!(
            HostOs::Windows.join("C:/ProgramData/u", &["bin", "x"]),
            "C:\\ProgramData\\u\\bin\\x"
        );
        assert_eq!(HostOs::Unix.join("/w/", &["bin", "x"]), "/w/bin/x");
    }
}
