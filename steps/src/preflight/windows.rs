//! The machine's Windows state, read through Windows APIs (never localized
//! tool text): a reboot already pending, Windows Installer busy, services
//! the plan names registered.
//!
//! - **Pending reboot**: the registry key
//!   `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending`,
//!   `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired`,
//!   or the value `PendingFileRenameOperations` under
//!   `HKLM\SYSTEM\CurrentControlSet\Control\Session Manager`.
//! - **Windows Installer busy**: the global mutex `Global\_MSIExecute`
//!   exists while an installation runs.
//! - **Services**: a service is registered when
//!   `HKLM\SYSTEM\CurrentControlSet\Services\<name>` exists.
//!
//! - **Certificates**: `cert.check`'s thumbprint in `LocalMachine\<store>`,
//!   read from the store's registry location ([`super::cert`]): present,
//!   a private key associated, valid long enough.
//!
//! On any other OS these are [`Check::NotChecked`] lines that say so.
//! Ports are checked per installing step ([`super::ports`]).

use super::Check;

#[cfg(not(windows))]
const NOT_WINDOWS: &str = "not checked on this OS: it reads the Windows registry and Windows Installer's mutex (run preflight on the Windows host)";

/// The state of this machine (the host that runs the steps): a reboot
/// already pending, Windows Installer busy; what is not checked.
pub fn host_state() -> Vec<Check> {
    let mut out = Vec::new();
    #[cfg(windows)]
    {
        out.extend(imp::pending_reboot());
        out.push(imp::installer_busy());
    }
    #[cfg(not(windows))]
    {
        out.push(Check::not_checked("a reboot already pending", NOT_WINDOWS));
        out.push(Check::not_checked("Windows Installer busy", NOT_WINDOWS));
    }
    out
}

/// Whether the service `name` is registered on this machine (Windows);
/// not checked elsewhere.
pub fn service(name: &str) -> Check {
    #[cfg(windows)]
    {
        imp::service(name)
    }
    #[cfg(not(windows))]
    {
        Check::not_checked(format!("service {name} registered"), NOT_WINDOWS)
    }
}

/// The certificate `thumbprint` (40 upper-case hex digits) in
/// `LocalMachine\<store>`: present, with a private key (if required),
/// valid for `min_days` more days. Read from the store's registry location
/// on Windows ([`super::cert`]); not checked elsewhere.
pub fn certificate(thumbprint: &str, store: &str, require_key: bool, min_days: u32) -> Vec<Check> {
    #[cfg(windows)]
    {
        match imp::cert_blob(store, thumbprint) {
            Ok(Some(blob)) => match super::cert::parse_store_blob(&blob) {
                Ok(entry) => super::cert::judge(
                    thumbprint,
                    store,
                    &entry,
                    require_key,
                    min_days,
                    chrono::Utc::now().naive_utc(),
                ),
                Err(e) => vec![Check::not_checked(
                    format!("certificate {thumbprint} in LocalMachine\\{store}"),
                    format!("its store entry could not be read: {e}"),
                )],
            },
            Ok(None) => vec![Check::finding(
                format!("no certificate {thumbprint} in LocalMachine\\{store}"),
                "the certificate the site file names, in the machine's store",
                "import it (with its private key) into LocalMachine\\My, or correct the thumbprint in the site file",
            )],
            Err(e) => vec![Check::not_checked(
                format!("certificate {thumbprint} in LocalMachine\\{store}"),
                e,
            )],
        }
    }
    #[cfg(not(windows))]
    {
        let _ = (require_key, min_days);
        vec![Check::not_checked(
            format!("certificate {thumbprint} in LocalMachine\\{store} (private key, expiry)"),
            "not checked on this OS: there is no Windows certificate store",
        )]
    }
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod imp {
    //! Registry and mutex reads. SAFETY for every block below: the wide
    //! strings are NUL-terminated and live across the call; handles are
    //! closed once, only when the call returned them.

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS};
    use windows_sys::Win32::System::Registry::{
        HKEY, HKEY_LOCAL_MACHINE, KEY_READ, RegCloseKey, RegOpenKeyExW, RegQueryValueExW,
    };
    use windows_sys::Win32::System::Threading::{OpenMutexW, SYNCHRONIZATION_SYNCHRONIZE};

    use super::Check;

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    /// Opens `HKLM\<path>` for reading; `None` when it does not exist.
    fn open(path: &str) -> Option<HKEY> {
        let p = wide(path);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: see the module docs.
        let rc = unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, p.as_ptr(), 0, KEY_READ, &mut key) };
        (rc == ERROR_SUCCESS).then_some(key)
    }

    fn key_exists(path: &str) -> bool {
        match open(path) {
            Some(k) => {
                // SAFETY: see the module docs.
                unsafe { RegCloseKey(k) };
                true
            }
            None => false,
        }
    }

    fn value_exists(path: &str, value: &str) -> bool {
        let Some(k) = open(path) else {
            return false;
        };
        let v = wide(value);
        // SAFETY: see the module docs; only the value's presence is asked
        // (no buffer).
        let rc = unsafe {
            RegQueryValueExW(
                k,
                v.as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: see the module docs.
        unsafe { RegCloseKey(k) };
        rc == ERROR_SUCCESS
    }

    /// The `Blob` of a certificate in a LocalMachine store; `Ok(None)`
    /// when there is no such certificate.
    pub fn cert_blob(store: &str, thumbprint: &str) -> Result<Option<Vec<u8>>, String> {
        let path = format!(
            r"SOFTWARE\Microsoft\SystemCertificates\{}\Certificates\{thumbprint}",
            store.to_ascii_uppercase()
        );
        let Some(k) = open(&path) else {
            return Ok(None);
        };
        let v = wide("Blob");
        let mut size: u32 = 0;
        // SAFETY: see the module docs; first the size (no buffer).
        let rc = unsafe {
            RegQueryValueExW(
                k,
                v.as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut size,
            )
        };
        let mut buf = vec![0u8; size as usize];
        let rc = if rc == ERROR_SUCCESS {
            // SAFETY: see the module docs; `buf` holds `size` bytes.
            unsafe {
                RegQueryValueExW(
                    k,
                    v.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    buf.as_mut_ptr(),
                    &mut size,
                )
            }
        } else {
            rc
        };
        // SAFETY: see the module docs.
        unsafe { RegCloseKey(k) };
        if rc != ERROR_SUCCESS {
            return Err(format!("reading {path}\\Blob failed (error {rc})"));
        }
        buf.truncate(size as usize);
        Ok(Some(buf))
    }

    pub fn pending_reboot() -> Vec<Check> {
        let mut why = Vec::new();
        if key_exists(
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
        ) {
            why.push("Component Based Servicing\\RebootPending");
        }
        if key_exists(
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired",
        ) {
            why.push("WindowsUpdate\\Auto Update\\RebootRequired");
        }
        if value_exists(
            r"SYSTEM\CurrentControlSet\Control\Session Manager",
            "PendingFileRenameOperations",
        ) {
            why.push("Session Manager\\PendingFileRenameOperations");
        }
        if why.is_empty() {
            vec![Check::ok("no reboot pending")]
        } else {
            vec![Check::finding(
                format!("a reboot is already pending ({})", why.join(", ")),
                "no pending reboot before the maintenance window (an installer would ask for one, or fail)",
                "reboot the machine before the window",
            )]
        }
    }

    pub fn installer_busy() -> Check {
        let name = wide(r"Global\_MSIExecute");
        // SAFETY: see the module docs.
        let h = unsafe { OpenMutexW(SYNCHRONIZATION_SYNCHRONIZE, 0, name.as_ptr()) };
        if h.is_null() {
            Check::ok("Windows Installer is idle")
        } else {
            // SAFETY: see the module docs.
            unsafe { CloseHandle(h) };
            Check::finding(
                "Windows Installer is busy (Global\\_MSIExecute is held): an installation is running",
                "no installation running",
                "let it finish (or find what installs: Windows Update, software distribution) and check again",
            )
        }
    }

    pub fn service(name: &str) -> Check {
        if key_exists(&format!(r"SYSTEM\CurrentControlSet\Services\{name}")) {
            Check::ok(format!("service {name} is registered"))
        } else {
            Check::finding(
                format!("no service {name} on this machine"),
                format!("service {name} (site file) registered"),
                "check the service name in the site file against services.msc",
            )
        }
    }
}
