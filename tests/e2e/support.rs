//! The harness: a temp folder per test, the real binary, readable failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use upshift_journal::{Envelope, Journal, RunId};

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
    fn from(out: Output) -> Ran {
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
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
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
