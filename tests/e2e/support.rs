//! The harness: a temp folder per test, the real binary, readable failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use upshift_journal::{Envelope, Journal, RunId};

/// util-linux `script`, which gives a command a pseudo-terminal; `None`,
/// after a loud SKIPPED line naming `what`, where it is not installed.
pub fn script_or_skip(what: &str) -> Option<&'static str> {
    let found = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    if found.is_none() {
        eprintln!("SKIPPED: `script` (util-linux) is not installed: {what} was not tested");
    }
    found
}

/// A follower drawing on a pseudo-terminal ([`Sandbox::follow_on_a_terminal`]).
pub struct Terminal {
    pub child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    /// Everything drawn so far, escape sequences included.
    pub fn text(&self) -> String {
        self.seen.lock().unwrap().clone()
    }
}

/// A test's sandbox: a journal folder, a marker folder, plans.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// What a finished command did.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from(out: Output) -> Ran {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
        #[cfg(not(unix))]
        let signal = None;
        Ran {
            code: out.status.code(),
            signal,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, printing both streams if it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Ran {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}, got {:?} (signal {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The first line of stdout (the run id of `upshift run`).
    pub fn run_id(&self) -> String {
        self.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_upshift")
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let s = Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(s.markers()).unwrap();
        s
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn journal(&self) -> PathBuf {
        self.path().join("journal")
    }

    pub fn markers(&self) -> PathBuf {
        self.path().join("markers")
    }

    /// Writes a plan, replacing `@M@` with the marker folder.
    pub fn plan(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(
            &p,
            text.replace("@M@", &self.markers().display().to_string()),
        )
        .unwrap();
        p
    }

    /// A command for the binary with this sandbox's journal.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("UPSHIFT_JOURNAL", self.journal())
            .env_remove("UPSHIFT_FAILPOINT_CRASH_AFTER")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.cmd(args).output().expect("spawn upshift"))
    }

    /// Runs with extra environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Ran::from(c.output().expect("spawn upshift"))
    }

    /// Lines of a marker file (0 if absent).
    pub fn marker_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.markers().join(name))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The events of a run, read through the journal crate.
    pub fn events(&self, run: &str) -> Vec<Envelope> {
        let j = Journal::open_read_only(&self.journal()).expect("open journal");
        j.read_run(run.parse::<RunId>().expect("run id"))
            .expect("read run")
    }

    /// Spawns `upshift run PLAN` and returns the child and its run id (the
    /// first line it prints).
    pub fn spawn_run(&self, plan: &Path) -> (std::process::Child, String) {
        use std::io::BufRead;
        let mut cmd = self.cmd(&["run", plan.to_str().unwrap()]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn upshift run");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line.trim().to_string())
    }

    /// `upshift status RUN --follow` on a pseudo-terminal of `cols` x
    /// `lines` (`script`, from [`script_or_skip`], gives it one, so the
    /// live view is drawn), its raw output collected as it comes.
    pub fn follow_on_a_terminal(&self, script: &str, run: &str, cols: u16, lines: u16) -> Terminal {
        let cmd = format!("{} status {run} --follow", bin());
        // stdin stays open (a pipe): `script` ends when its input does.
        let mut child = Command::new(script)
            .args(["-qfec", &cmd, "/dev/null"])
            .env("UPSHIFT_JOURNAL", self.journal())
            .env("COLUMNS", cols.to_string())
            .env("LINES", lines.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn script");
        // Raw bytes: the view is redrawn with cursor moves, not whole lines.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stdout.take().expect("piped");
        let buf = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Terminal { child, seen }
    }

    /// Waits (bounded) until `status --json` shows `step` in `state`.
    pub fn wait_for_step(&self, run: &str, step: &str, state: &str) -> bool {
        wait_until(std::time::Duration::from_secs(20), || {
            let r = self.run(&["status", run, "--json"]);
            r.code == Some(0)
                && serde_json::from_str::<serde_json::Value>(&r.stdout)
                    .is_ok_and(|v| v["steps"][step]["state"] == state)
        })
    }

    /// The run's inbox, as the CLI writes it.
    pub fn inbox(&self) -> upshift::app::inbox::DirInbox {
        upshift::app::inbox::DirInbox::new(self.journal().join("inbox"))
    }

    /// Queues `approve STEP` for a live run as `user` claims to be; returns
    /// the file.
    pub fn queue_approve(&self, run: &str, step: &str, user: &str) -> PathBuf {
        let decision = upshift::app::inbox::InboxDecision {
            decision: upshift_journal::Decision::Approve { step: step.into() },
            actor: upshift_journal::Actor {
                user: user.into(),
                host: "h".into(),
                pid: 1,
            },
            reason: "from the test".into(),
        };
        self.inbox()
            .queue(run.parse().expect("run id"), &decision)
            .expect("queued")
    }

    /// Waits (bounded) until the live engine has taken every decision
    /// queued for `run`.
    pub fn wait_inbox_taken(&self, run: &str) -> bool {
        let dir = self.inbox().run_dir(run.parse().expect("run id"));
        wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_dir(&dir).map_or(true, |d| d.count() == 0)
        })
    }

    /// Runs a command that must fail with `code` and say `says` on stderr.
    #[track_caller]
    pub fn run_refused(&self, args: &[&str], code: i32, says: &str) -> Ran {
        let r = self.run(args);
        r.expect(code);
        assert!(r.stderr.contains(says), "upshift {args:?}: {}", r.stderr);
        r
    }

    /// `status --json` of a run.
    pub fn status(&self, run: &str) -> serde_json::Value {
        let r = self.run(&["status", run, "--json"]);
        r.expect(0);
        serde_json::from_str(&r.stdout).expect("status json")
    }
}

/// Counts processes whose command line contains `token` (Linux /proc).
#[cfg(target_os = "linux")]
pub fn processes_with(token: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(token) {
                out.push(format!("{}: {cmd}", name.to_string_lossy()));
            }
        }
    }
    out
}

/// Waits (bounded) until `cond` holds; false if it never did.
pub fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Every byte of every file under `dir` (to grep for secrets).
pub fn all_bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    memchr::memmem::find(hay, needle.as_bytes()).is_some()
}

/// A stand-in for systemctl: records its arguments in the marker file
/// `systemctl.calls`, does nothing else. Returns its path.
#[cfg(unix)]
pub fn standin_systemctl(sb: &Sandbox) -> String {
    let path = sb.path().join("systemctl-standin");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# stand-in for systemctl (test): records calls, reboots nothing\necho \"$@\" >> {}/systemctl.calls\n",
            sb.markers().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A step that keeps a live engine busy until the `go` marker appears (at
/// most 30 s), as one line of a plan's `[steps]` table.
pub const WAIT_FOR_GO: &str = r#"{ kind = "process", with = { program = "sh", args = ["-c", "for i in $(seq 600); do [ -e @M@/go ] && exit 0; sleep 0.05; done; exit 1"] } }"#;

/// Stops the demo's stand-ins (folder `.0`) when the test ends, and waits
/// (bounded) until they are gone: a test leaves no `upshift
/// __demo-standins` behind, even when it panics. (Linux: it reads /proc,
/// as the demo tests that use it run only there.)
#[cfg(target_os = "linux")]
pub struct StopStandins(pub PathBuf);

#[cfg(target_os = "linux")]
impl Drop for StopStandins {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("standins.stop"), "");
        let token = format!("__demo-standins {}", self.0.display());
        wait_until(std::time::Duration::from_secs(10), || {
            processes_with(&token).is_empty()
        });
    }
}
