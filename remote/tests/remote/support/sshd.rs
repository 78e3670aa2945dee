//! A lab of real OpenSSH `sshd` "hosts" on loopback addresses (127.0.0.2,
//! 127.0.0.3, ...), each on an unprivileged port, with its own host key,
//! work folder and boot id file; one user key pair, one wrong key pair and
//! a known_hosts file listing every host. Shared by the tests and benches.
//!
//! Every host logs in as the current user (creating users would change the
//! machine's /etc/passwd for a test); what tells hosts apart is the work
//! folder and the environment sshd gives each session (`SetEnv`):
//! `UPSHIFT_TEST_HOST=<name>`, the boot id file and the reboot command.
//! `UPSHIFT_TEST_LAB=<id>` marks every process started through the lab, so
//! a simulated reboot kills exactly one host's processes and `Drop` kills
//! everything the lab started, even when a test panics.
//!
//! `SHLVL=2` keeps the login shell from reading the user's `~/.bashrc`
//! (bash reads it for sshd's commands only at shell level 1): a shell
//! killed by a simulated reboot in the middle of an rc file can leave
//! stale locks behind (seen: pyenv's rehash lock, which then made every
//! login of the machine wait 60 s), and rc files are not what is tested.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use upshift_remote::RemoteHost;
use upshift_remote::client::{ClientOptions, HostConfig, TransportConfig};
use upshift_remote::transport::ssh::SshConfig;

/// The sshd binary (Debian's openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";

/// The stand-in binary of upshift-remote's own tests and benches. The
/// engine's tests (`tests/e2e/remote_hosts.rs`, which include this file)
/// use the `upshift` binary instead: [`Lab::start_empty`], [`Lab::seed`].
fn stub() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_upshift-remote-stub") {
        Some(p) => PathBuf::from(p),
        None => panic!("the stub binary exists in upshift-remote's tests and benches only"),
    }
}

/// One sshd "host".
pub struct Host {
    /// Its name (`h1`, `h2`...).
    pub name: String,
    /// Its loopback address.
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Its folder (config, keys, logs, boot id, work folder).
    pub dir: PathBuf,
    /// The runner's work folder on this host.
    pub work_dir: PathBuf,
    /// The file the host's boot id is read from.
    pub boot_id_file: PathBuf,
    /// Written (one line per call) by the host's reboot command.
    pub reboot_log: PathBuf,
    sshd: Option<Child>,
}

/// A set of hosts; everything stops on drop.
pub struct Lab {
    /// Unique per lab (marks processes).
    pub id: String,
    /// The lab's folder.
    pub root: tempfile::TempDir,
    /// The accepted user key.
    pub user_key: PathBuf,
    /// A key no host accepts.
    pub wrong_key: PathBuf,
    /// Every host's key.
    pub known_hosts: PathBuf,
    /// The login.
    pub user: String,
    /// The hosts.
    pub hosts: Vec<Host>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "upshift-test", "-f"])
        .arg(path));
}

fn free_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why sshd tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!(
            "{SSHD} is missing (apt-get install openssh-server; .ci/run installs it)"
        ));
    }
    for tool in ["ssh", "sftp", "ssh-keygen"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new("which")
                .arg(tool)
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        {
            return Some(format!("the OpenSSH client tool {tool} is missing"));
        }
    }
    None
}

impl Lab {
    /// Starts `n` hosts, each with the stub binary already in its work
    /// folder (as a previous install would have left it). `None`, with a
    /// loud SKIPPED line, where sshd cannot run.
    pub fn start(n: usize) -> Option<Lab> {
        Self::start_with(n, true)
    }

    /// Like [`Lab::start`], without the binary on the hosts.
    pub fn start_empty(n: usize) -> Option<Lab> {
        Self::start_with(n, false)
    }

    fn start_with(n: usize, seeded: bool) -> Option<Lab> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: sshd tests, because {why}");
            return None;
        }
        // sshd's privilege separation folder (exists on a host where the
        // ssh service ran; not in a fresh container).
        let _ = std::fs::create_dir_all("/run/sshd");
        let root = tempfile::Builder::new()
            .prefix("upshift-sshd-lab-")
            .tempdir()
            .expect("temp dir");
        let id = format!(
            "{}-{}",
            std::process::id(),
            root.path().file_name().unwrap().to_string_lossy()
        );
        let user_key = root.path().join("id_ed25519");
        let wrong_key = root.path().join("wrong_ed25519");
        keygen(&user_key);
        keygen(&wrong_key);
        std::fs::copy(
            user_key.with_extension("pub"),
            root.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let mut lab = Lab {
            id,
            known_hosts: root.path().join("known_hosts"),
            user_key,
            wrong_key,
            user: current_user(),
            root,
            hosts: Vec::new(),
        };
        for i in 0..n {
            let name = format!("h{}", i + 1);
            let addr = format!("127.0.0.{}", i + 2);
            let dir = lab.root.path().join(&name);
            let work_dir = dir.join("work");
            std::fs::create_dir_all(&work_dir).unwrap();
            let boot_id_file = dir.join("boot_id");
            std::fs::write(&boot_id_file, format!("boot-{name}-1\n")).unwrap();
            let reboot_log = dir.join("reboots.log");
            let reboot = dir.join("reboot.sh");
            std::fs::write(
                &reboot,
                format!("#!/bin/sh\necho reboot >> '{}'\n", reboot_log.display()),
            )
            .unwrap();
            run(Command::new("chmod").arg("755").arg(&reboot));
            keygen(&dir.join("ssh_host_ed25519_key"));
            let port = free_port(&addr);
            lab.hosts.push(Host {
                name,
                addr,
                port,
                dir,
                work_dir,
                boot_id_file,
                reboot_log,
                sshd: None,
            });
            lab.write_config(i);
            if seeded {
                lab.seed_binary(i);
            }
        }
        lab.write_known_hosts();
        for i in 0..n {
            if let Err(e) = lab.start_sshd(i) {
                eprintln!("SKIPPED: sshd tests, because sshd does not start here: {e}");
                return None;
            }
        }
        Some(lab)
    }

    fn write_config(&self, i: usize) {
        let h = &self.hosts[i];
        let cfg = format!(
            "ListenAddress {addr}:{port}\n\
             HostKey {dir}/ssh_host_ed25519_key\n\
             AuthorizedKeysFile {root}/authorized_keys\n\
             PidFile none\n\
             StrictModes no\n\
             UsePAM no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             Subsystem sftp internal-sftp\n\
             SetEnv UPSHIFT_TEST_LAB={id} UPSHIFT_TEST_HOST={name} \
             UPSHIFT_REMOTE_BOOT_ID_FILE={boot} UPSHIFT_REMOTE_REBOOT_COMMAND={dir}/reboot.sh \
             SHLVL=2\n\
             LogLevel VERBOSE\n",
            addr = h.addr,
            port = h.port,
            dir = h.dir.display(),
            root = self.root.path().display(),
            user = self.user,
            id = self.id,
            name = h.name,
            boot = h.boot_id_file.display(),
        );
        std::fs::write(h.dir.join("sshd_config"), cfg).unwrap();
    }

    fn write_known_hosts(&self) {
        let mut text = String::new();
        for h in &self.hosts {
            text.push_str(&self.known_hosts_line(h));
        }
        std::fs::write(&self.known_hosts, text).unwrap();
    }

    /// The known_hosts line of a host's current key.
    pub fn known_hosts_line(&self, h: &Host) -> String {
        let key = std::fs::read_to_string(h.dir.join("ssh_host_ed25519_key.pub")).unwrap();
        let mut parts = key.split_whitespace();
        format!(
            "[{}]:{} {} {}\n",
            h.addr,
            h.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        )
    }

    /// Puts the stub where an install would (a hard link when possible).
    fn seed_binary(&self, i: usize) {
        self.seed(i, &stub());
    }

    /// Puts `binary` into host `i`'s work folder where an install would
    /// have left it (`bin/<sha256>/upshift`).
    pub fn seed(&self, i: usize, binary: &Path) {
        let (sha, _) = upshift_steps::hash::sha256_file(binary).unwrap();
        let bin = self.hosts[i].work_dir.join("bin").join(sha);
        std::fs::create_dir_all(&bin).unwrap();
        let to = bin.join("upshift");
        if std::fs::hard_link(binary, &to).is_err() {
            std::fs::copy(binary, &to).unwrap();
        }
    }

    /// Starts (again) host `i`'s sshd and waits until it accepts.
    pub fn start_sshd(&mut self, i: usize) -> Result<(), String> {
        let h = &mut self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.dir.join("sshd.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(h.dir.join("sshd_config"))
            .env("UPSHIFT_TEST_LAB", &self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        h.sshd = Some(child);
        let addr: SocketAddr = format!("{}:{}", h.addr, h.port).parse().unwrap();
        let began = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = h.sshd.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(h.dir.join("sshd.log")).unwrap_or_default();
                return Err(format!("sshd exited ({status}): {log}"));
            }
            if began.elapsed() > Duration::from_secs(10) {
                return Err("sshd did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills host `i`'s sshd: the listener and every per-connection sshd
    /// process (what a crash of the ssh service does). Commands started
    /// through it are not killed; they lose their connection.
    pub fn kill_sshd(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(mut c) = h.sshd.take() {
            let listener = c.id();
            for pid in descendants(listener) {
                if comm(pid).as_deref() == Some("sshd") {
                    kill9(pid);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) host `i`'s sshd processes: a
    /// network that goes silent, with no FIN or RST for the client to see.
    pub fn freeze_sshd(&mut self, i: usize, frozen: bool) {
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        if let Some(c) = self.hosts[i].sshd.as_ref() {
            let listener = c.id();
            let mut all = descendants(listener);
            all.push(listener);
            for pid in all {
                if comm(pid).as_deref() == Some("sshd") {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
                }
            }
        }
    }

    /// A reboot of host `i`, as far as a test can tell: every process of
    /// that host killed (sshd, sessions, runners, step processes), a new
    /// boot id, sshd started again.
    pub fn simulate_reboot(&mut self, i: usize) {
        self.kill_sshd(i);
        let name = self.hosts[i].name.clone();
        kill_marked(&self.id, Some(&name));
        let h = &self.hosts[i];
        let old = std::fs::read_to_string(&h.boot_id_file).unwrap();
        let n: u32 = old.trim().rsplit('-').next().unwrap().parse().unwrap();
        std::fs::write(&h.boot_id_file, format!("boot-{}-{}\n", h.name, n + 1)).unwrap();
        self.start_sshd(i).expect("sshd restarts");
    }

    /// Gives host `i` a new host key (known_hosts keeps the old one).
    pub fn change_host_key(&mut self, i: usize) {
        self.kill_sshd(i);
        keygen(&self.hosts[i].dir.join("ssh_host_ed25519_key"));
        self.start_sshd(i).expect("sshd restarts");
    }

    /// A known_hosts file without host `i`.
    pub fn known_hosts_without(&self, i: usize) -> PathBuf {
        let path = self.root.path().join(format!("known_hosts_without_{i}"));
        let text: String = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, h)| self.known_hosts_line(h))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// How a coordinator reaches host `i`.
    pub fn ssh_config(&self, i: usize) -> SshConfig {
        let h = &self.hosts[i];
        let mut c = SshConfig::new(&h.addr, &self.user, &self.user_key, &self.known_hosts);
        c.port = h.port;
        c.connect_timeout = Duration::from_secs(5);
        // A lost connection is noticed in 2 s in tests.
        c.keepalive_interval = Duration::from_secs(1);
        c.keepalive_count_max = 2;
        c
    }

    /// Coordinator options for tests: quick polls and reconnects.
    pub fn options() -> ClientOptions {
        let mut o = ClientOptions::new(stub());
        o.poll_wait = Duration::from_millis(500);
        o.request_timeout = Duration::from_secs(20);
        o.reconnect_initial = Duration::from_millis(100);
        o.reconnect_max = Duration::from_millis(500);
        o.reconnect_give_up = Duration::from_secs(60);
        o
    }

    /// A coordinator's handle on host `i`.
    pub fn remote(&self, i: usize) -> RemoteHost {
        self.remote_with(i, self.ssh_config(i))
    }

    /// A handle on host `i` with another ssh configuration.
    pub fn remote_with(&self, i: usize, ssh: SshConfig) -> RemoteHost {
        self.remote_with_options(i, ssh, Self::options())
    }

    /// A handle on host `i` with other ssh and coordinator options.
    pub fn remote_with_options(&self, i: usize, ssh: SshConfig, opts: ClientOptions) -> RemoteHost {
        RemoteHost::new(
            HostConfig {
                name: self.hosts[i].name.clone(),
                transport: TransportConfig::Ssh(ssh),
                work_dir: self.hosts[i].work_dir.display().to_string(),
            },
            opts,
        )
        .expect("host config")
    }

    /// A ticket's folder on host `i`.
    pub fn ticket_dir(&self, i: usize, ticket: &str) -> PathBuf {
        self.hosts[i].work_dir.join("tickets").join(ticket)
    }

    /// upshift plan `[hosts.hN]` tables for the first `n` hosts of the lab
    /// (ssh transport, the lab's key and known_hosts, quick keepalive so a
    /// lost host is noticed in ~2 s). Used by upshift's tests and benches.
    pub fn hosts_toml(&self, n: usize) -> String {
        let mut out = String::new();
        for h in self.hosts.iter().take(n) {
            out.push_str(&format!(
                "[hosts.{name}]\ntransport = \"ssh\"\naddress = \"{addr}\"\nport = {port}\n\
                 user = \"{user}\"\nidentity_file = \"{key}\"\nknown_hosts_file = \"{kh}\"\n\
                 work_dir = \"{work}\"\nconnect_timeout = \"5s\"\nkeepalive_interval = \"1s\"\n\
                 keepalive_count_max = 2\n\n",
                name = h.name,
                addr = h.addr,
                port = h.port,
                user = self.user,
                key = self.user_key.display(),
                kh = self.known_hosts.display(),
                work = h.work_dir.display(),
            ));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill_sshd(i);
        }
        kill_marked(&self.id, None);
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, parent) in &all {
            if *parent == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// Whether process `pid`'s environment has `KEY=value`.
fn has_env(pid: u32, pair: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == pair.as_bytes()))
        .unwrap_or(false)
}

/// SIGKILL, ignoring a process already gone.
pub fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILLs every process of the lab (of one host, if `host` is given),
/// until none is left (a dying parent may still start a child).
pub fn kill_marked(lab: &str, host: Option<&str>) {
    let me = std::process::id();
    let lab_pair = format!("UPSHIFT_TEST_LAB={lab}");
    let host_pair = host.map(|h| format!("UPSHIFT_TEST_HOST={h}"));
    for _ in 0..20 {
        let victims: Vec<u32> = pids()
            .into_iter()
            .filter(|p| *p != me)
            .filter(|p| has_env(*p, &lab_pair))
            .filter(|p| host_pair.as_ref().is_none_or(|hp| has_env(*p, hp)))
            .collect();
        if victims.is_empty() {
            return;
        }
        for p in victims {
            kill9(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every live process (not a zombie) whose command line holds `needle`.
pub fn processes_with_cmdline(needle: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|p| {
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let zombie = state
                .rfind(')')
                .and_then(|i| state[i + 1..].split_whitespace().next().map(|s| s == "Z"))
                .unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
        })
        .collect()
}
