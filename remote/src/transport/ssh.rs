//! The system OpenSSH client (`ssh`, `sftp`) as the transport.
//!
//! Why the system client and not a Rust SSH library: see docs/remote.md
//! ("Transport"). In short, russh needs a C crypto backend (aws-lc-sys or
//! ring) that cannot be built for the Windows target here, while Windows
//! ships the OpenSSH client; and OpenSSH's host-key checking, keepalive and
//! connect timeout are the reference behaviour an administrator knows.
//!
//! Every invocation ignores the user's and the system's ssh configuration
//! (`-F none`) and sets what upshift relies on explicitly:
//! - host keys are checked against the configured known_hosts file only
//!   (`StrictHostKeyChecking=yes`, that file as both the user and the global
//!   list): an unknown or changed key fails, never gets added;
//! - no prompts (`BatchMode=yes`), public key only, that one key only
//!   (`IdentitiesOnly=yes`, no agent);
//! - `ConnectTimeout`, and keepalive (`ServerAliveInterval` ×
//!   `ServerAliveCountMax`): a silent network loses the connection after
//!   interval × count instead of hanging;
//! - no connection sharing (`ControlMaster=no`; Win32-OpenSSH has none, and
//!   a user's `ControlPath` would break it), no forwarding, no TTY.
//!
//! OpenSSH's messages are not translated, so telling a refused key from an
//! unreachable host by its stderr is stable across locales; unknown
//! failures are reported as "unreachable" (transient) with ssh's own words.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HostOs, RemoteChild, RemoteCommand, Transport, piped};
use crate::RemoteError;

/// How to reach a host with ssh (the plan's `[hosts.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// Name or address.
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Login (`corp\tm-admin` works for Windows domain users).
    pub user: String,
    /// The private key.
    pub identity_file: PathBuf,
    /// The only file host keys are checked against.
    pub known_hosts_file: PathBuf,
    /// Limit for the TCP connect and the SSH handshake.
    pub connect_timeout: Duration,
    /// Keepalive probe interval (`ServerAliveInterval`).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the connection counts as lost.
    pub keepalive_count_max: u32,
    /// The ssh client (default `ssh` on PATH; Windows: System32\OpenSSH).
    pub ssh_program: PathBuf,
    /// The sftp client (default `sftp` on PATH).
    pub sftp_program: PathBuf,
}

impl SshConfig {
    /// A configuration with upshift's defaults: port 22, connect timeout
    /// 15 s, keepalive every 5 s, lost after 3 missed (15 s).
    pub fn new(
        address: impl Into<String>,
        user: impl Into<String>,
        identity_file: impl Into<PathBuf>,
        known_hosts_file: impl Into<PathBuf>,
    ) -> SshConfig {
        SshConfig {
            address: address.into(),
            port: 22,
            user: user.into(),
            identity_file: identity_file.into(),
            known_hosts_file: known_hosts_file.into(),
            connect_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count_max: 3,
            ssh_program: PathBuf::from("ssh"),
            sftp_program: PathBuf::from("sftp"),
        }
    }
}

/// Runs commands on a host through the system `ssh` client.
#[derive(Debug, Clone)]
pub struct SshTransport {
    host: String,
    cfg: SshConfig,
    os: HostOs,
}

impl SshTransport {
    /// A transport to `host` (its name in the plan). Checks that the key
    /// and known_hosts files can be read, so a typo fails here, naming the
    /// host and the file, not as a refused login later.
    pub fn new(host: impl Into<String>, cfg: SshConfig, os: HostOs) -> Result<Self, RemoteError> {
        let host = host.into();
        for (what, path) in [
            ("identity_file", &cfg.identity_file),
            ("known_hosts_file", &cfg.known_hosts_file),
        ] {
            if let Err(e) = std::fs::File::open(path) {
                return Err(RemoteError::Config {
                    host,
                    message: format!("{what} {} cannot be read: {e}", path.display()),
                });
            }
        }
        if cfg.user.is_empty() || cfg.address.is_empty() {
            return Err(RemoteError::Config {
                host,
                message: "ssh needs an address and a user".into(),
            });
        }
        Ok(SshTransport { host, cfg, os })
    }

    /// The configuration.
    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    /// The `-o` options every ssh and sftp invocation gets.
    pub fn options(&self) -> Vec<String> {
        let c = &self.cfg;
        let kh = c.known_hosts_file.display().to_string();
        let secs = |d: Duration| d.as_secs().max(1).to_string();
        let mut v = vec!["-F".to_string(), "none".to_string()];
        for (k, val) in [
            ("BatchMode", "yes".to_string()),
            ("StrictHostKeyChecking", "yes".to_string()),
            ("UserKnownHostsFile", quote_option(&kh)),
            ("GlobalKnownHostsFile", quote_option(&kh)),
            ("UpdateHostKeys", "no".to_string()),
            ("CheckHostIP", "no".to_string()),
            ("HashKnownHosts", "no".to_string()),
            ("VerifyHostKeyDNS", "no".to_string()),
            (
                "IdentityFile",
                quote_option(&c.identity_file.display().to_string()),
            ),
            ("IdentitiesOnly", "yes".to_string()),
            ("IdentityAgent", "none".to_string()),
            ("PreferredAuthentications", "publickey".to_string()),
            ("PasswordAuthentication", "no".to_string()),
            ("KbdInteractiveAuthentication", "no".to_string()),
            ("User", c.user.clone()),
            ("Port", c.port.to_string()),
            ("ConnectTimeout", secs(c.connect_timeout)),
            ("ServerAliveInterval", secs(c.keepalive_interval)),
            (
                "ServerAliveCountMax",
                c.keepalive_count_max.max(1).to_string(),
            ),
            ("TCPKeepAlive", "yes".to_string()),
            ("ControlMaster", "no".to_string()),
            ("ControlPath", "none".to_string()),
            ("ForwardAgent", "no".to_string()),
            ("ForwardX11", "no".to_string()),
            ("ClearAllForwardings", "yes".to_string()),
            ("LogLevel", "ERROR".to_string()),
        ] {
            v.push("-o".into());
            v.push(format!("{k}={val}"));
        }
        v
    }

    /// The ssh arguments that run `cmd` on the host.
    pub fn ssh_args(&self, cmd: &RemoteCommand) -> Result<Vec<String>, RemoteError> {
        let mut v = self.options();
        v.push("-T".into());
        v.push("-e".into());
        v.push("none".into());
        v.push(self.cfg.address.clone());
        v.push("--".into());
        v.push(self.command_line(cmd)?);
        Ok(v)
    }

    /// The command line the host's shell gets (sh on Unix; cmd.exe, the
    /// default shell of Windows OpenSSH, on Windows).
    pub fn command_line(&self, cmd: &RemoteCommand) -> Result<String, RemoteError> {
        let words = std::iter::once(&cmd.program).chain(cmd.args.iter());
        let mut out = Vec::new();
        for w in words {
            out.push(match self.os {
                HostOs::Unix => quote_sh(w),
                HostOs::Windows => quote_cmd(w).ok_or_else(|| RemoteError::Config {
                    host: self.host.clone(),
                    message: format!(
                        "`{w}` cannot be passed safely through cmd.exe; keep work_dir to \
                         letters, digits, `-`, `_`, `.`, `:`, `\\` and `/`"
                    ),
                })?,
            });
        }
        Ok(out.join(" "))
    }

    /// Starts an OpenSSH client program (ssh, sftp) with piped stdio.
    fn client(&self, program: &Path, args: Vec<String>) -> Result<RemoteChild, RemoteError> {
        let child = piped(program).args(args).spawn().map_err(|e| RemoteError::Config {
            host: self.host.clone(),
            message: format!(
                "cannot start the OpenSSH client {}: {e} (install OpenSSH's client, or set its path)",
                program.display()
            ),
        })?;
        Ok(RemoteChild::from_child(child))
    }

    /// The error for a failed ssh/sftp invocation, from its stderr.
    pub fn classify(&self, stderr: &str) -> RemoteError {
        let c = &self.cfg;
        let detail = last_lines(stderr, 3);
        let kh = c.known_hosts_file.display().to_string();
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || (stderr.contains("Host key for") && stderr.contains("has changed"))
        {
            RemoteError::HostKeyChanged {
                host: self.host.clone(),
                known_hosts: kh,
                detail,
            }
        } else if stderr.contains("Host key verification failed")
            || stderr.contains("host key is known for")
        {
            RemoteError::HostKeyUnknown {
                host: self.host.clone(),
                known_hosts: kh,
                detail,
            }
        } else if stderr.contains("Permission denied") || stderr.contains("Too many authentication")
        {
            RemoteError::AuthRefused {
                host: self.host.clone(),
                user: c.user.clone(),
                identity: c.identity_file.display().to_string(),
                detail,
            }
        } else if stderr.contains("Load key") || stderr.contains("invalid format") {
            RemoteError::Config {
                host: self.host.clone(),
                message: format!(
                    "identity_file {} is not a usable private key ({detail})",
                    c.identity_file.display()
                ),
            }
        } else if stderr.contains("Timeout, server") || stderr.contains("Broken pipe") {
            RemoteError::Disconnected {
                host: self.host.clone(),
                detail,
            }
        } else {
            RemoteError::Unreachable {
                host: self.host.clone(),
                detail: if detail.is_empty() {
                    format!("ssh to {}:{} failed without a message", c.address, c.port)
                } else {
                    detail
                },
            }
        }
    }
}

#[async_trait::async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.host
    }

    fn os(&self) -> HostOs {
        self.os
    }

    fn describe(&self) -> String {
        format!(
            "ssh {}@{}:{}",
            self.cfg.user, self.cfg.address, self.cfg.port
        )
    }

    async fn connect(&self) -> Result<(), RemoteError> {
        let cmd = RemoteCommand {
            program: "exit".into(),
            args: vec!["0".into()],
        };
        let limit = self.cfg.connect_timeout + Duration::from_secs(5);
        let out = self.run(&cmd, b"", limit).await?;
        if out.code != 0 {
            return Err(self.classify(&out.stderr));
        }
        Ok(())
    }

    async fn spawn(&self, cmd: &RemoteCommand) -> Result<RemoteChild, RemoteError> {
        self.client(&self.cfg.ssh_program, self.ssh_args(cmd)?)
    }

    fn failure(&self, code: i32, stderr: &str) -> Option<RemoteError> {
        // ssh exits 255 for its own errors; upshift's commands never do.
        (code == 255).then(|| self.classify(stderr))
    }

    async fn copy_file(&self, local: &Path, remote: &str) -> Result<(), RemoteError> {
        let remote = sftp_path(self.os, remote);
        let (dir, _) = remote.rsplit_once('/').unwrap_or(("", &remote));
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let part = format!("{remote}.part-{nonce}");
        let mut batch = String::new();
        // Create each folder level; `-` ignores "already exists".
        let mut prefix = String::new();
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            if prefix.ends_with(':') {
                continue; // `/C:` is a drive, not a folder
            }
            batch.push_str(&format!("-mkdir {}\n", quote_sftp(&prefix)));
        }
        let local_s = local.display().to_string();
        #[cfg(windows)]
        let local_s = local_s.replace('\\', "/");
        batch.push_str(&format!(
            "put {} {}\n",
            quote_sftp(&local_s),
            quote_sftp(&part)
        ));
        if self.os == HostOs::Unix {
            batch.push_str(&format!("chmod 755 {}\n", quote_sftp(&part)));
        }
        // OpenSSH's sftp renames with posix-rename when the server offers
        // it (atomic, replaces); the target is content-addressed, so it
        // normally does not exist yet.
        batch.push_str(&format!(
            "rename {} {}\n",
            quote_sftp(&part),
            quote_sftp(&remote)
        ));
        let mut args = self.options();
        args.extend(["-b".to_string(), "-".to_string(), self.cfg.address.clone()]);
        let sftp = self.client(&self.cfg.sftp_program, args)?;
        // A 100 MB binary over a slow WAN link stays well inside this.
        let limit = Duration::from_secs(30 * 60);
        let (_, err, code) =
            super::finish(&self.host, "sftp", sftp, batch.as_bytes(), limit).await?;
        if code == 0 {
            return Ok(());
        }
        if code == 255 && !err.contains("remote ") {
            return Err(self.classify(&err));
        }
        Err(RemoteError::Io {
            host: self.host.clone(),
            what: format!("copying {} to {remote} with sftp", local.display()),
            detail: last_lines(&err, 4),
        })
    }
}

/// A remote path as sftp wants it: forward slashes; on Windows the
/// absolute `/C:/...` form (a bare `C:/...` is taken as relative to the
/// home folder by some servers).
fn sftp_path(os: HostOs, path: &str) -> String {
    match os {
        HostOs::Unix => path.to_string(),
        HostOs::Windows => {
            let p = path.replace('\\', "/");
            if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            }
        }
    }
}

/// Quotes a word for a POSIX shell.
fn quote_sh(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// A word for cmd.exe: only characters cmd.exe does not interpret, so no
/// quoting is needed (cmd's quote rules for `cmd /c` are a trap); `None`
/// for anything else.
fn quote_cmd(w: &str) -> Option<String> {
    (!w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:\\/".contains(c)))
    .then(|| w.to_string())
}

/// Quotes a path for an sftp batch file.
fn quote_sftp(p: &str) -> String {
    format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An ssh option value with spaces in quotes (ssh's own config syntax).
fn quote_option(v: &str) -> String {
    if v.contains(' ') {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(os: HostOs) -> SshTransport {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        let kh = dir.path().join("kh");
        std::fs::write(&id, "k").unwrap();
        std::fs::write(&kh, "").unwrap();
        let t = SshTransport::new(
            "lync",
            SshConfig::new("10.0.0.5", "corp\\adm", &id, &kh),
            os,
        )
        .unwrap();
        std::mem::forget(dir);
        t
    }

    #[test]
    fn options_verify_host_keys_and_never_prompt() {
        let t = transport(HostOs::Unix);
        let o = t.options().join(" ");
        for want in [
            "-F none",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "ControlMaster=no",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "ConnectTimeout=15",
            "User=corp\\adm",
        ] {
            assert!(o.contains(want), "{want} missing from {o}");
        }
    }

    #[test]
    fn command_lines_are_quoted_for_the_hosts_shell() {
        let cmd = RemoteCommand {
            program: "/w d/bin/upshift".into(),
            args: vec!["__remote".into(), "it's".into()],
        };
        assert_eq!(
            transport(HostOs::Unix).command_line(&cmd).unwrap(),
            "'/w d/bin/upshift' __remote 'it'\\''s'"
        );
        let win = transport(HostOs::Windows);
        let ok = RemoteCommand {
            program: "C:\\ProgramData\\u\\upshift.exe".into(),
            args: vec!["__remote".into(), "serve".into()],
        };
        assert_eq!(
            win.command_line(&ok).unwrap(),
            "C:\\ProgramData\\u\\upshift.exe __remote serve"
        );
        let e = win.command_line(&cmd).unwrap_err();
        assert!(e.to_string().contains("host lync"), "{e}");
    }

    #[test]
    fn ssh_messages_become_errors_naming_host_and_user() {
        let t = transport(HostOs::Unix);
        let changed = "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key for [h]:22 has changed and you have requested strict checking.\nHost key verification failed.\n";
        assert!(matches!(
            t.classify(changed),
            RemoteError::HostKeyChanged { .. }
        ));
        let unknown = "No ED25519 host key is known for [h]:22 and you have requested strict checking.\nHost key verification failed.\n";
        assert!(matches!(
            t.classify(unknown),
            RemoteError::HostKeyUnknown { .. }
        ));
        let denied = t.classify("adm@h: Permission denied (publickey).\n");
        assert!(matches!(denied, RemoteError::AuthRefused { .. }));
        let text = denied.to_string();
        assert!(
            text.contains("host lync") && text.contains("corp\\adm"),
            "{text}"
        );
        let refused = t.classify("ssh: connect to host h port 22: Connection refused\n");
        assert!(refused.is_transient());
        assert!(t.failure(1, "").is_none());
    }

    #[test]
    fn sftp_paths_on_windows_are_absolute() {
        assert_eq!(
            sftp_path(HostOs::Windows, "C:\\ProgramData\\u\\x.exe"),
            "/C:/ProgramData/u/x.exe"
        );
        assert_eq!(sftp_path(HostOs::Unix, "/w/x"), "/w/x");
        assert_eq!(quote_sftp("a \"b\\"), "\"a \\\"b\\\\\"");
    }

    #[test]
    fn unreadable_key_files_are_refused_up_front() {
        let e = SshTransport::new(
            "sql",
            SshConfig::new("h", "u", "/nonexistent/id", "/nonexistent/kh"),
            HostOs::Unix,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("host sql") && text.contains("identity_file"),
            "{text}"
        );
    }
}
