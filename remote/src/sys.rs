//! What the host side needs to know of its own machine: the boot id, the
//! identity of a process (to tell "still running" from "gone, and its pid
//! reused"), free disk, administrator rights. Read through OS interfaces
//! (`/proc`, `statvfs`; on Windows the registry and process APIs), never by
//! parsing a command's localized text.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Environment variable naming a file whose content replaces the boot id
/// (tests: a simulated reboot changes it). Set on the host (e.g. by sshd's
/// `SetEnv`), never by the coordinator.
pub const BOOT_ID_FILE_ENV: &str = "UPSHIFT_REMOTE_BOOT_ID_FILE";

/// A process as the host knows it: pid plus what makes it unique across
/// pid reuse and reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: u32,
    /// The process's start time in the OS's own unit (Linux: clock ticks
    /// since boot, from `/proc/<pid>/stat`; Windows: the creation FILETIME).
    /// 0 where the OS gives none (then only the pid is compared).
    pub start: u64,
    /// The boot the process belongs to ([`boot_id`]).
    pub boot_id: String,
}

impl ProcessIdentity {
    /// This process.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        ProcessIdentity {
            pid,
            start: platform::start_time(pid).unwrap_or(0),
            boot_id: boot_id(),
        }
    }

    /// Whether this very process is still running: same boot, the pid
    /// alive, the same start time (a reused pid has another).
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        match platform::start_time(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        }
    }

    /// Why [`ProcessIdentity::is_alive`] is false, in words.
    pub fn why_gone(&self) -> String {
        if self.boot_id != boot_id() {
            format!(
                "the host rebooted since the runner started (boot id was {}, now {})",
                self.boot_id,
                boot_id()
            )
        } else {
            format!(
                "the runner (pid {}) is gone without writing its end (killed, or it crashed)",
                self.pid
            )
        }
    }
}

/// An id that changes with every boot of the host. [`BOOT_ID_FILE_ENV`]
/// overrides it (tests).
pub fn boot_id() -> String {
    if let Some(file) = std::env::var_os(BOOT_ID_FILE_ENV)
        && let Ok(text) = std::fs::read_to_string(&file)
    {
        return text.trim().to_string();
    }
    platform::boot_id()
}

/// Bytes free for the current user in the folder's file system.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    platform::free_bytes(dir)
}

/// Whether the current process has administrator rights.
pub fn is_admin() -> bool {
    platform::is_admin()
}

/// The user the current process runs as.
pub fn user() -> String {
    platform::user()
}

/// The host's name.
pub fn hostname() -> String {
    platform::hostname()
}

#[cfg(unix)]
mod platform {
    use std::path::Path;

    pub fn start_time(pid: u32) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces and
            // parentheses, so split after the last `)`. Fields after it
            // start at field 3 (state); starttime is field 22.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
                return None; // a zombie has ended
            }
            fields.get(19)?.parse().ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            use nix::sys::signal::kill;
            use nix::unistd::Pid;
            // No portable start time: the pid alone (documented weakness).
            kill(Pid::from_raw(pid as i32), None).ok().map(|_| 0)
        }
    }

    pub fn boot_id() -> String {
        #[cfg(target_os = "linux")]
        if let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            return id.trim().to_string();
        }
        "unknown-boot".to_string()
    }

    pub fn free_bytes(dir: &Path) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(dir).ok()?;
        #[allow(clippy::unnecessary_cast)] // the field types differ per platform
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    pub fn is_admin() -> bool {
        nix::unistd::geteuid().is_root()
    }

    pub fn user() -> String {
        let uid = nix::unistd::geteuid();
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {uid}"))
    }

    pub fn hostname() -> String {
        nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

// Only type-checked here (no Windows machine): see docs/remote.md.
#[cfg(windows)]
#[allow(unsafe_code)]
mod platform {
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;

    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, STILL_ACTIVE};
    use windows_sys::Win32::System::Registry::{
        HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RegGetValueW,
    };
    use windows_sys::Win32::System::SystemInformation::{GetSystemTimeAsFileTime, GetTickCount64};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    fn filetime(ft: &FILETIME) -> u64 {
        (u64::from(ft.dwHighDateTime) << 32) | u64::from(ft.dwLowDateTime)
    }

    /// The creation time of a running process, `None` if it has exited or
    /// cannot be opened.
    pub fn start_time(pid: u32) -> Option<u64> {
        // SAFETY: plain Win32 calls with a handle we own and close; the out
        // pointers point at locals of the right types.
        unsafe {
            let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if h.is_null() {
                return None;
            }
            let mut code = 0u32;
            let running = GetExitCodeProcess(h, &mut code) != 0 && code == STILL_ACTIVE as u32;
            let zero = FILETIME {
                dwLowDateTime: 0,
                dwHighDateTime: 0,
            };
            let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
            let ok = GetProcessTimes(h, &mut c, &mut e, &mut k, &mut u) != 0;
            CloseHandle(h);
            (running && ok).then(|| filetime(&c))
        }
    }

    /// The boot counter Windows keeps in the registry, with the boot time
    /// (now − uptime, to the minute) as a fallback when it cannot be read.
    pub fn boot_id() -> String {
        let key = wide(
            "SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Memory Management\\PrefetchParameters",
        );
        let value = wide("BootId");
        let mut data = 0u32;
        let mut len = std::mem::size_of::<u32>() as u32;
        // SAFETY: NUL-terminated wide strings; `data` is a DWORD of `len` bytes.
        let rc = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                key.as_ptr(),
                value.as_ptr(),
                RRF_RT_REG_DWORD,
                std::ptr::null_mut(),
                (&mut data as *mut u32).cast(),
                &mut len,
            )
        };
        let boot_minute = boot_time_unix_s() / 60;
        if rc == 0 {
            format!("win-bootid-{data}")
        } else {
            format!("win-boottime-{boot_minute}")
        }
    }

    /// Seconds since 1970 at which the host booted.
    pub fn boot_time_unix_s() -> u64 {
        let mut now = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        // SAFETY: out pointer to a local FILETIME; GetTickCount64 has no arguments.
        let (now, up_ms) = unsafe {
            GetSystemTimeAsFileTime(&mut now);
            (filetime(&now), GetTickCount64())
        };
        // FILETIME: 100 ns units since 1601-01-01.
        let now_s = (now / 10_000_000).saturating_sub(11_644_473_600);
        now_s.saturating_sub(up_ms / 1000)
    }

    pub fn free_bytes(dir: &Path) -> Option<u64> {
        use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
        let path: Vec<u16> = dir.as_os_str().encode_wide().chain(Some(0)).collect();
        let mut free = 0u64;
        // SAFETY: NUL-terminated path; null for the outputs we do not want.
        let ok = unsafe {
            GetDiskFreeSpaceExW(
                path.as_ptr(),
                &mut free,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        (ok != 0).then_some(free)
    }

    pub fn is_admin() -> bool {
        // True for an elevated administrator token, which is what OpenSSH
        // gives an administrator logging in with a key.
        // SAFETY: no arguments.
        unsafe { windows_sys::Win32::UI::Shell::IsUserAnAdmin() != 0 }
    }

    pub fn user() -> String {
        let user = std::env::var("USERNAME").unwrap_or_default();
        match std::env::var("USERDOMAIN") {
            Ok(d) if !d.is_empty() => format!("{d}\\{user}"),
            _ => user,
        }
    }

    pub fn hostname() -> String {
        std::env::var("COMPUTERNAME").unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive());
        let mut reused = me.clone();
        reused.start += 1;
        if me.start != 0 {
            assert!(
                !reused.is_alive(),
                "a different start time is another process"
            );
        }
        let mut other_boot = me.clone();
        other_boot.boot_id.push('x');
        assert!(!other_boot.is_alive());
        assert!(other_boot.why_gone().contains("rebooted"));

        let mut child = std::process::Command::new(if cfg!(windows) { "cmd" } else { "true" })
            .args(if cfg!(windows) {
                &["/c", "exit"][..]
            } else {
                &[][..]
            })
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = ProcessIdentity {
            pid,
            start: 1,
            boot_id: boot_id(),
        };
        assert!(!gone.is_alive());
    }

    #[test]
    fn facts_are_available() {
        assert!(!boot_id().is_empty());
        assert!(free_bytes(Path::new(".")).unwrap_or(0) > 0);
        assert!(!user().is_empty());
    }
}
