//! Ports a component will listen on, read-only: free, or held by the
//! component being upgraded itself (before an upgrade the old version
//! still listens: not a finding); and an IIS site's port not bound by
//! **another** IIS site.
//!
//! - **Who listens** on a TCP port, with the owning process:
//!   on Windows `GetExtendedTcpTable` (iphlpapi, IPv4 and IPv6, the
//!   listener table with owning PIDs), the PID named through
//!   `QueryFullProcessImageNameW` and the services it hosts through
//!   `EnumServicesStatusExW` (the service control manager); on Linux
//!   `/proc/net/tcp` and `/proc/net/tcp6` (listening sockets, their
//!   inodes) and `/proc/<pid>/fd` (which process holds which socket);
//!   elsewhere not checked.
//! - **The component itself** is a holder that hosts the component's
//!   service ([`Listens::service`]), whose executable is
//!   [`Listens::exe`], or — for an IIS site ([`Listens::iis_site`]) —
//!   HTTP.sys (System, PID 4) or an IIS worker (`w3wp.exe`) while that site
//!   is bound to the port.
//! - **IIS**: the sites and bindings from IIS's configuration file
//!   `%windir%\System32\inetsrv\config\applicationHost.config`, read
//!   (never written) with quick-xml; `$UPSHIFT_IIS_CONFIG` points at
//!   another file (tests, stand-ins; on any OS). An `http`/`https` binding
//!   `IP:PORT:HOST` of another site on the same port is a finding, as the
//!   manual says: "the used site port number should be not used by other
//!   sites".

use std::path::{Path, PathBuf};

use super::Check;

/// The environment variable naming the IIS configuration file to read
/// instead of `%windir%\System32\inetsrv\config\applicationHost.config`.
pub const IIS_CONFIG_ENV: &str = "UPSHIFT_IIS_CONFIG";

/// What a component listens on once installed, and how to recognise the
/// component itself holding it (the version being upgraded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listens {
    /// The TCP port.
    pub port: u16,
    /// The component's Windows service: a holder hosting it is the
    /// component itself.
    pub service: Option<String>,
    /// The component's executable file name (`TM.AC.Service.exe`; matched
    /// without case and with or without `.exe`).
    pub exe: Option<String>,
    /// The component's IIS site: its port is served by HTTP.sys, and no
    /// other IIS site may bind it.
    pub iis_site: Option<String>,
}

/// A process listening on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The local address it listens on (`0.0.0.0:8101`, `[::]:8101`).
    pub addr: String,
    /// Its PID, when it could be found (another user's process may be
    /// hidden from this one).
    pub pid: Option<u32>,
    /// Its executable's file name.
    pub exe: Option<String>,
    /// The services it hosts (Windows).
    pub services: Vec<String>,
}

impl Holder {
    /// `TM.AC.Service.exe (PID 812, service "Luware TM AC")`.
    pub fn describe(&self) -> String {
        let mut s = match (&self.exe, self.pid) {
            (Some(e), Some(p)) => format!("{e} (PID {p}"),
            (None, Some(4)) => "System (PID 4, HTTP.sys".to_string(),
            (None, Some(p)) => format!("a process (PID {p}"),
            (_, None) => "a process the OS did not name (on Linux another user's process is hidden unless preflight runs as root; Wine gives no owning PID)".to_string(),
        };
        if self.pid.is_some() {
            if !self.services.is_empty() {
                s.push_str(&format!(
                    ", service{} {}",
                    if self.services.len() > 1 { "s" } else { "" },
                    self.services
                        .iter()
                        .map(|x| format!("\"{x}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            s.push(')');
        }
        s
    }

    fn is_http_sys_or_iis(&self) -> bool {
        self.pid == Some(4)
            || self.exe.as_deref().is_some_and(|e| {
                let e = e.to_ascii_lowercase();
                e == "system" || e == "w3wp.exe" || e == "w3wp"
            })
    }
}

/// Whether `exe` (a file name) is `want`, without case, `.exe` optional.
fn same_exe(exe: &str, want: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        s.strip_suffix(".exe").map(str::to_string).unwrap_or(s)
    };
    strip(exe) == strip(want)
}

/// Whether `h` is the component itself (`own_site_binds`: the
/// component's IIS site is bound to the port).
pub fn is_own(h: &Holder, l: &Listens, own_site_binds: bool) -> bool {
    if let Some(s) = &l.service
        && h.services.iter().any(|x| x.eq_ignore_ascii_case(s))
    {
        return true;
    }
    if let (Some(want), Some(exe)) = (&l.exe, &h.exe)
        && same_exe(exe, want)
    {
        return true;
    }
    l.iis_site.is_some() && own_site_binds && h.is_http_sys_or_iis()
}

/// The component's own name in words (`service "Luware TM AC"`).
fn owner_words(l: &Listens) -> String {
    let mut w = Vec::new();
    if let Some(s) = &l.service {
        w.push(format!("service \"{s}\""));
    }
    if let Some(e) = &l.exe {
        w.push(e.clone());
    }
    if let Some(s) = &l.iis_site {
        w.push(format!("IIS site \"{s}\""));
    }
    if w.is_empty() {
        "the component".into()
    } else {
        w.join(" / ")
    }
}

/// Judges the holders of `l.port`: free, the component itself, or taken.
pub fn judge(l: &Listens, holders: &[Holder], own_site_binds: bool, others: &[String]) -> Check {
    let port = l.port;
    if holders.is_empty() {
        return Check::ok(format!("port {port} is free"));
    }
    let (own, foreign): (Vec<&Holder>, Vec<&Holder>) =
        holders.iter().partition(|h| is_own(h, l, own_site_binds));
    if foreign.is_empty() {
        return Check::ok(format!(
            "port {port} is held by the component itself ({}: {}), the version being upgraded",
            owner_words(l),
            own.iter()
                .map(|h| h.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut found = format!(
        "port {port} is taken by {}",
        foreign
            .iter()
            .map(|h| format!("{} on {}", h.describe(), h.addr))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !others.is_empty() && foreign.iter().any(|h| h.is_http_sys_or_iis()) {
        found.push_str(&format!(
            " — bound by IIS site(s) {}",
            others
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Check::finding(
        found,
        format!(
            "port {port} free, or held by {} (the version being upgraded)",
            owner_words(l)
        ),
        "stop and disable that program (or move it to another port), or give the component another port in the site file; if it IS the component, correct its service name in the site file",
    )
}

/// A binding: `(protocol, bindingInformation, port)` (the port of an
/// `http`/`https` binding).
pub type Binding = (String, String, Option<u16>);

/// A site of IIS's configuration and its `http`/`https` bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IisSite {
    /// The site's name.
    pub name: String,
    /// `(protocol, bindingInformation, port)`.
    pub bindings: Vec<Binding>,
}

/// The port of an `http`/`https` binding's `bindingInformation`
/// (`IP:PORT:HOST`; the IP may be an IPv6 address in brackets).
pub fn binding_port(info: &str) -> Option<u16> {
    let rest = match info.strip_prefix('[') {
        Some(r) => r.split_once("]:")?.1,
        None => info.split_once(':')?.1,
    };
    rest.split(':').next()?.trim().parse().ok()
}

/// The sites of an `applicationHost.config` text (`<sites><site name>
/// <bindings><binding protocol bindingInformation>`). Errors name the
/// line.
pub fn parse_iis_config(text: &str) -> Result<Vec<IisSite>, String> {
    use quick_xml::events::Event;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = quick_xml::reader::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let line_at = |pos: u64| {
        let pos = (pos as usize).min(text.len());
        text.as_bytes()[..pos]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    let mut path: Vec<String> = Vec::new();
    let mut sites: Vec<IisSite> = Vec::new();
    loop {
        let before = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| format!("line {}: {e}", line_at(reader.error_position())))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = e.name().as_ref().to_string();
                let attr = |want: &str| -> Result<Option<String>, String> {
                    for a in e.attributes() {
                        let a = a.map_err(|x| format!("line {}: {x}", line_at(before)))?;
                        if a.key.as_ref() == want {
                            let v = a
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map_err(|x| format!("line {}: {x}", line_at(before)))?;
                            return Ok(Some(v.into_owned()));
                        }
                    }
                    Ok(None)
                };
                let parent = path.last().map(String::as_str);
                if name == "site" && parent == Some("sites") {
                    sites.push(IisSite {
                        name: attr("name")?.unwrap_or_default(),
                        bindings: Vec::new(),
                    });
                } else if name == "binding"
                    && parent == Some("bindings")
                    && path.len() >= 2
                    && path[path.len() - 2] == "site"
                    && let Some(site) = sites.last_mut()
                {
                    let protocol = attr("protocol")?.unwrap_or_default();
                    let info = attr("bindingInformation")?.unwrap_or_default();
                    let port = if protocol.eq_ignore_ascii_case("http")
                        || protocol.eq_ignore_ascii_case("https")
                    {
                        binding_port(&info)
                    } else {
                        None
                    };
                    site.bindings.push((protocol, info, port));
                }
                if !empty {
                    path.push(name);
                }
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(sites)
}

/// Where IIS's configuration is read: `$UPSHIFT_IIS_CONFIG`, else (on
/// Windows) `%windir%\System32\inetsrv\config\applicationHost.config`.
pub fn iis_config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(IIS_CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if cfg!(windows) {
        let windir = std::env::var_os("windir")
            .or_else(|| std::env::var_os("SystemRoot"))
            .unwrap_or_else(|| "C:\\Windows".into());
        return Some(
            Path::new(&windir)
                .join("System32")
                .join("inetsrv")
                .join("config")
                .join("applicationHost.config"),
        );
    }
    None
}

/// The IIS check of `site` on `port` against the sites of `config`
/// (read from `path`): the site exists, no other site binds the port.
/// Returns the check and the other sites binding the port.
pub fn judge_iis(site: &str, port: u16, sites: &[IisSite], path: &Path) -> (Check, Vec<String>) {
    let shown = path.display();
    let Some(own) = sites.iter().find(|s| s.name.eq_ignore_ascii_case(site)) else {
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        return (
            Check::finding(
                format!(
                    "no IIS site \"{site}\" in {shown} (sites: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
                format!("the component's IIS site \"{site}\" (site file: iis_site)"),
                "correct iis_site in the site file to the site's name in IIS Manager",
            ),
            Vec::new(),
        );
    };
    let others: Vec<(&IisSite, &Binding)> = sites
        .iter()
        .filter(|s| !std::ptr::eq(*s, own))
        .flat_map(|s| {
            s.bindings
                .iter()
                .filter(|b| b.2 == Some(port))
                .map(move |b| (s, b))
        })
        .collect();
    if others.is_empty() {
        let own_binds = own.bindings.iter().any(|b| b.2 == Some(port));
        return (
            Check::ok(format!(
                "site port {port} is not bound by another IIS site ({}; {shown})",
                if own_binds {
                    format!("\"{site}\" itself binds it")
                } else {
                    format!("\"{site}\" does not bind it yet")
                }
            )),
            Vec::new(),
        );
    }
    let names: Vec<String> = {
        let mut n: Vec<String> = others.iter().map(|(s, _)| s.name.clone()).collect();
        n.dedup();
        n
    };
    (
        Check::finding(
            format!(
                "site port {port} is already bound by IIS site(s) {}",
                others
                    .iter()
                    .map(|(s, b)| format!("\"{}\" ({} {})", s.name, b.0, b.1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "site port {port} used by \"{site}\" only (manual: \"the used site port number should be not used by other sites\")"
            ),
            format!(
                "give \"{site}\" another site port (site file: site_port), or change or remove the other site's binding in IIS Manager"
            ),
        ),
        names,
    )
}

/// Every check for `l`: the IIS site (if any), then who holds the port.
pub fn check(l: &Listens) -> Vec<Check> {
    let mut out = Vec::new();
    let mut own_site_binds = false;
    let mut others = Vec::new();
    if let Some(site) = &l.iis_site {
        match iis_config_path() {
            None => out.push(Check::not_checked(
                format!("site port {} not bound by another IIS site", l.port),
                format!(
                    "not checked on this OS: IIS's configuration is on Windows (${IIS_CONFIG_ENV} names a copy to read)"
                ),
            )),
            Some(path) => match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Check::finding(
                    format!("no IIS configuration at {}", path.display()),
                    format!("IIS installed, with the component's site \"{site}\""),
                    "install IIS (and the component's site) on this host, or run the component's steps on the host that has it",
                )),
                Err(e) => out.push(Check::not_checked(
                    format!("site port {} not bound by another IIS site", l.port),
                    format!("{} cannot be read: {e}", path.display()),
                )),
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    match parse_iis_config(&text) {
                        Ok(sites) => {
                            own_site_binds = sites.iter().any(|s| {
                                s.name.eq_ignore_ascii_case(site)
                                    && s.bindings.iter().any(|b| b.2 == Some(l.port))
                            });
                            let (c, o) = judge_iis(site, l.port, &sites, &path);
                            others = o;
                            out.push(c);
                        }
                        Err(e) => out.push(Check::finding(
                            format!("{}: {e}", path.display()),
                            "IIS's configuration, well-formed",
                            "repair applicationHost.config (IIS keeps backups in inetsrv\\backup and the history folder)",
                        )),
                    }
                }
            },
        }
    }
    out.push(match listeners(l.port) {
        Ok(holders) => judge(l, &holders, own_site_binds, &others),
        Err(why) => Check::not_checked(format!("port {} free", l.port), why),
    });
    out
}

/// The processes listening on TCP `port` (any local address).
pub fn listeners(port: u16) -> Result<Vec<Holder>, String> {
    #[cfg(windows)]
    {
        imp::listeners(port)
    }
    #[cfg(target_os = "linux")]
    {
        linux::listeners(port)
    }
    #[cfg(not(any(windows, target_os = "linux")))]
    {
        let _ = port;
        Err("not checked on this OS (Windows: GetExtendedTcpTable; Linux: /proc)".into())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! `/proc/net/tcp{,6}`: `sl local_address rem_address st ... inode`,
    //! addresses as hex `ADDR:PORT`, state `0A` = LISTEN.

    use super::Holder;

    /// `(local address as shown, inode)` of the sockets listening on `port`.
    pub fn listening(table: &str, port: u16, v6: bool) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr, p)) = f[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            out.push((show_addr(addr, port, v6), inode));
        }
        out
    }

    fn show_addr(hex: &str, port: u16, v6: bool) -> String {
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        if !v6 && bytes.len() == 4 {
            // One little-endian 32-bit word.
            format!("{}.{}.{}.{}:{port}", bytes[3], bytes[2], bytes[1], bytes[0])
        } else if v6 && bytes.len() == 16 {
            // Four little-endian 32-bit words.
            let mut b = [0u8; 16];
            for w in 0..4 {
                for i in 0..4 {
                    b[4 * w + i] = bytes[4 * w + 3 - i];
                }
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        } else {
            format!("{hex}:{port}")
        }
    }

    pub fn listeners(port: u16) -> Result<Vec<Holder>, String> {
        let mut socks = Vec::new();
        let mut read_any = false;
        for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
            if let Ok(t) = std::fs::read_to_string(file) {
                read_any = true;
                socks.extend(listening(&t, port, v6));
            }
        }
        if !read_any {
            return Err("/proc/net/tcp cannot be read".into());
        }
        if socks.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: Vec<Option<u32>> = vec![None; socks.len()];
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    let Ok(target) = std::fs::read_link(fd.path()) else {
                        continue;
                    };
                    let t = target.to_string_lossy();
                    let Some(inode) = t
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|r| r.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    for (i, (_, ino)) in socks.iter().enumerate() {
                        if *ino == inode && found[i].is_none() {
                            found[i] = Some(pid);
                        }
                    }
                }
            }
        }
        Ok(socks
            .into_iter()
            .zip(found)
            .map(|((addr, _), pid)| Holder {
                addr,
                pid,
                exe: pid.and_then(exe_of),
                services: Vec::new(),
            })
            .collect())
    }

    fn exe_of(pid: u32) -> Option<String> {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .or_else(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|s| s.trim().to_string())
            })
    }
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod imp {
    //! iphlpapi, the process and service APIs. SAFETY for every block
    //! below: buffers are sized by the API's own answer and outlive the
    //! call; rows are read within `dwNumEntries`; handles are closed once,
    //! only when the call returned them.

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_INSUFFICIENT_BUFFER, NO_ERROR};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GetExtendedTcpTable, MIB_TCP6ROW_OWNER_PID, MIB_TCPROW_OWNER_PID,
        TCP_TABLE_OWNER_PID_LISTENER,
    };
    use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};
    use windows_sys::Win32::System::Services::{
        CloseServiceHandle, ENUM_SERVICE_STATUS_PROCESSW, EnumServicesStatusExW, OpenSCManagerW,
        SC_ENUM_PROCESS_INFO, SC_MANAGER_ENUMERATE_SERVICE, SERVICE_ACTIVE, SERVICE_WIN32,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
        QueryFullProcessImageNameW,
    };

    use super::Holder;

    /// The raw listener table of one address family.
    fn table(af: u16) -> Result<Vec<u8>, String> {
        let mut size: u32 = 0;
        let mut buf: Vec<u8> = Vec::new();
        for _ in 0..5 {
            // SAFETY: see the module docs.
            let rc = unsafe {
                GetExtendedTcpTable(
                    if buf.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        buf.as_mut_ptr().cast()
                    },
                    &mut size,
                    0,
                    af as u32,
                    TCP_TABLE_OWNER_PID_LISTENER,
                    0,
                )
            };
            if rc == NO_ERROR && !buf.is_empty() {
                return Ok(buf);
            }
            if rc == ERROR_INSUFFICIENT_BUFFER || (rc == NO_ERROR && buf.is_empty()) {
                // 8-byte aligned storage of at least `size` bytes.
                buf = vec![0u8; size as usize + 64];
                continue;
            }
            return Err(format!("GetExtendedTcpTable failed (error {rc})"));
        }
        Err("GetExtendedTcpTable: the table kept growing".into())
    }

    fn rows<T: Copy>(buf: &[u8]) -> Vec<T> {
        if buf.len() < 4 {
            return Vec::new();
        }
        let n = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        // The rows start after the count, at the row type's alignment.
        let start = std::mem::align_of::<T>().max(4);
        let size = std::mem::size_of::<T>();
        (0..n)
            .filter(|i| start + (i + 1) * size <= buf.len())
            // SAFETY: see the module docs; read_unaligned copes with the
            // Vec<u8> storage.
            .map(|i| unsafe {
                std::ptr::read_unaligned(buf.as_ptr().add(start + i * size).cast::<T>())
            })
            .collect()
    }

    fn port_of(dw: u32) -> u16 {
        u16::from_be(dw as u16)
    }

    pub fn listeners(port: u16) -> Result<Vec<Holder>, String> {
        let mut found: Vec<(String, u32)> = Vec::new();
        for r in rows::<MIB_TCPROW_OWNER_PID>(&table(AF_INET)?) {
            if port_of(r.dwLocalPort) == port {
                let ip = std::net::Ipv4Addr::from(u32::from_be(r.dwLocalAddr));
                found.push((format!("{ip}:{port}"), r.dwOwningPid));
            }
        }
        if let Ok(t6) = table(AF_INET6) {
            for r in rows::<MIB_TCP6ROW_OWNER_PID>(&t6) {
                if port_of(r.dwLocalPort) == port {
                    let ip = std::net::Ipv6Addr::from(r.ucLocalAddr);
                    found.push((format!("[{ip}]:{port}"), r.dwOwningPid));
                }
            }
        }
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let services = services_by_pid();
        Ok(found
            .into_iter()
            .map(|(addr, pid)| Holder {
                addr,
                // PID 0: the owner is not known (Wine gives 0 for a socket
                // of a process outside Wine).
                pid: (pid != 0).then_some(pid),
                exe: if pid == 0 || pid == 4 {
                    None
                } else {
                    exe_of(pid)
                },
                services: services
                    .iter()
                    .filter(|(p, _)| *p == pid && pid != 0)
                    .map(|(_, n)| n.clone())
                    .collect(),
            })
            .collect())
    }

    fn exe_of(pid: u32) -> Option<String> {
        // SAFETY: see the module docs.
        let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if h.is_null() {
            return None;
        }
        let mut buf = vec![0u16; 1024];
        let mut len = buf.len() as u32;
        // SAFETY: see the module docs.
        let ok = unsafe {
            QueryFullProcessImageNameW(h, PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut len)
        };
        // SAFETY: see the module docs.
        unsafe { CloseHandle(h) };
        if ok == 0 {
            return None;
        }
        let full = String::from_utf16_lossy(&buf[..len as usize]);
        full.rsplit(['\\', '/']).next().map(str::to_string)
    }

    /// Every running service with the PID of its process.
    fn services_by_pid() -> Vec<(u32, String)> {
        // SAFETY: see the module docs.
        let scm = unsafe {
            OpenSCManagerW(
                std::ptr::null(),
                std::ptr::null(),
                SC_MANAGER_ENUMERATE_SERVICE,
            )
        };
        if scm.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut needed: u32 = 0;
        let mut count: u32 = 0;
        let mut resume: u32 = 0;
        let mut buf: Vec<u8> = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: see the module docs.
            let ok = unsafe {
                EnumServicesStatusExW(
                    scm,
                    SC_ENUM_PROCESS_INFO,
                    SERVICE_WIN32,
                    SERVICE_ACTIVE,
                    buf.as_mut_ptr(),
                    buf.len() as u32,
                    &mut needed,
                    &mut count,
                    &mut resume,
                    std::ptr::null(),
                )
            };
            // SAFETY: no arguments.
            let more = ok == 0
                && unsafe { windows_sys::Win32::Foundation::GetLastError() }
                    == windows_sys::Win32::Foundation::ERROR_MORE_DATA;
            let written = if ok != 0 || more { count as usize } else { 0 };
            let entries = buf.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>();
            for i in 0..written {
                // SAFETY: see the module docs; `count` entries were written
                // at the buffer's start, their strings inside the buffer.
                let e = unsafe { std::ptr::read_unaligned(entries.add(i)) };
                let name = unsafe { wide_str(e.lpServiceName) };
                out.push((e.ServiceStatusProcess.dwProcessId, name));
            }
            if !more {
                break;
            }
            if needed as usize > buf.len() {
                buf = vec![0u8; needed as usize];
            }
        }
        // SAFETY: see the module docs.
        unsafe { CloseServiceHandle(scm) };
        out
    }

    /// # Safety
    /// `p` is null or a NUL-terminated UTF-16 string.
    unsafe fn wide_str(p: *const u16) -> String {
        if p.is_null() {
            return String::new();
        }
        let mut n = 0;
        // SAFETY: the caller's contract.
        while unsafe { *p.add(n) } != 0 {
            n += 1;
        }
        // SAFETY: `n` elements were just read.
        String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <sites>
      <site name="Default Web Site" id="1">
        <bindings>
          <binding protocol="http" bindingInformation="*:80:" />
          <binding protocol="net.tcp" bindingInformation="808:*" />
        </bindings>
      </site>
      <site name="Luware-TM-FE" id="2">
        <application path="/" />
        <bindings>
          <binding protocol="https" bindingInformation="*:443:" />
        </bindings>
      </site>
      <site name="Intranet" id="3">
        <bindings>
          <binding protocol="https" bindingInformation="[::1]:8443:intranet.contoso.com" />
        </bindings>
      </site>
    </sites>
  </system.applicationHost>
</configuration>
"#;

    #[test]
    fn binding_ports_are_read_from_binding_information() {
        assert_eq!(binding_port("*:443:"), Some(443));
        assert_eq!(binding_port("10.0.0.5:8080:tm.contoso.com"), Some(8080));
        assert_eq!(binding_port("[::1]:8443:x"), Some(8443));
        assert_eq!(binding_port("garbage"), None);
    }

    #[test]
    fn another_site_on_the_port_is_a_finding_and_tm_alone_is_ok() {
        let sites = parse_iis_config(CONFIG).unwrap();
        assert_eq!(sites.len(), 3);
        assert_eq!(sites[0].bindings[1].2, None, "net.tcp has no http port");
        let p = Path::new("applicationHost.config");
        let (c, _) = judge_iis("Luware-TM-FE", 443, &sites, p);
        assert!(!c.is_finding(), "{c:?}");
        let (c, others) = judge_iis("Luware-TM-API", 8443, &sites, p);
        assert!(c.is_finding(), "no such site: {c:?}");
        assert!(others.is_empty());
        let (c, others) = judge_iis("Luware-TM-FE", 80, &sites, p);
        assert!(c.is_finding(), "{c:?}");
        assert_eq!(others, vec!["Default Web Site".to_string()]);
        let Check::Finding { found, .. } = c else {
            unreachable!()
        };
        assert!(
            found.contains("\"Default Web Site\" (http *:80:)"),
            "{found}"
        );
    }

    #[test]
    fn a_broken_config_names_the_line() {
        let e =
            parse_iis_config("<configuration>\n<sites>\n</site>\n</configuration>").unwrap_err();
        assert!(e.starts_with("line 3"), "{e}");
    }

    #[test]
    fn holders_are_judged_by_service_exe_or_own_iis_site() {
        let l = Listens {
            port: 8101,
            service: Some("Luware TM AC".into()),
            exe: None,
            iis_site: None,
        };
        assert!(!judge(&l, &[], false, &[]).is_finding());
        let own = Holder {
            addr: "0.0.0.0:8101".into(),
            pid: Some(812),
            exe: Some("TM.AC.Service.exe".into()),
            services: vec!["luware tm ac".into()],
        };
        assert!(!judge(&l, std::slice::from_ref(&own), false, &[]).is_finding());
        let other = Holder {
            addr: "0.0.0.0:8101".into(),
            pid: Some(999),
            exe: Some("nginx.exe".into()),
            services: vec![],
        };
        let c = judge(&l, &[own, other], false, &[]);
        let Check::Finding { found, .. } = c else {
            panic!("{c:?}")
        };
        assert!(
            found.contains("nginx.exe (PID 999) on 0.0.0.0:8101"),
            "{found}"
        );
        let iis = Listens {
            port: 443,
            iis_site: Some("Luware-TM-FE".into()),
            ..Listens::default()
        };
        let sys = Holder {
            addr: "0.0.0.0:443".into(),
            pid: Some(4),
            exe: None,
            services: vec![],
        };
        assert!(!judge(&iis, std::slice::from_ref(&sys), true, &[]).is_finding());
        assert!(judge(&iis, &[sys], false, &["Default Web Site".into()]).is_finding());
        assert!(same_exe("TM.AC.Service.EXE", "tm.ac.service"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_net_tcp_lines_are_read() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1FA5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1FA5 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let l = linux::listening(t, 0x1FA5, false);
        assert_eq!(l, vec![("127.0.0.1:8101".to_string(), 12345)]);
        let t6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:1FA5 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(
            linux::listening(t6, 0x1FA5, true),
            vec![("[::1]:8101".to_string(), 999)]
        );
    }

    #[cfg(any(windows, target_os = "linux"))]
    #[test]
    fn a_real_listener_is_found_with_this_process_as_its_holder() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let h = listeners(port).unwrap();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].addr, format!("127.0.0.1:{port}"));
        // Wine's GetExtendedTcpTable gives owning PID 0 (unnamed); Windows
        // and Linux name this process.
        if cfg!(target_os = "linux") || h[0].pid.is_some() {
            assert_eq!(h[0].pid, Some(std::process::id()), "{h:?}");
        }
        drop(sock);
        assert!(listeners(port).unwrap().is_empty());
    }
}
