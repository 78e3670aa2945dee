//! Folders and files only their owner may use, and the check that refuses
//! a folder others could write into (sshd's StrictModes, for the journal
//! and its inbox).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Creates `dir` and its missing parents so that only the owner may use
/// them: on Unix the folders this call creates get mode 0700; on Windows
/// `dir`, when this call creates it, gets a protected (not inherited) DACL
/// that allows SYSTEM, Administrators and the current user only. A folder
/// that exists is left as it is (see [`check_private_dir`]).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(windows)]
    {
        std::fs::create_dir_all(dir)?;
        super::windows::set_owner_only_dacl(dir)
    }
    #[cfg(not(any(unix, windows)))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// A folder that others than its owner (and root / Administrators) could
/// write into, or that another user owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insecure {
    /// The folder.
    pub path: PathBuf,
    /// What is wrong, e.g. `mode 0777: group and others may write`.
    pub detail: String,
    /// The command that fixes it.
    pub fix: String,
}

impl fmt::Display for Insecure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not private ({}): anyone who can write there could change the journal or give decisions; fix it with: {}",
            self.path.display(),
            self.detail,
            self.fix
        )
    }
}

impl std::error::Error for Insecure {}

/// Refuses, like sshd's StrictModes, a folder that others may write into:
/// on Unix a folder with group or other write permission, or owned by
/// someone other than this process's user or root; on Windows a folder
/// whose DACL lets anyone but SYSTEM, Administrators, its owner and this
/// user write (checked with the Windows security API). A missing folder
/// passes (it will be created private).
pub fn check_private_dir(dir: &Path) -> Result<(), Insecure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(dir) else {
            return Ok(());
        };
        let mode = meta.mode() & 0o7777;
        let me = effective_uid();
        let mut wrong = Vec::new();
        if mode & 0o022 != 0 {
            let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            };
            wrong.push(format!("mode {mode:04o}: {who} may write"));
        }
        if meta.uid() != me && meta.uid() != 0 {
            wrong.push(format!("owned by uid {}, not by uid {me}", meta.uid()));
        }
        if wrong.is_empty() {
            return Ok(());
        }
        let mut fix = format!("chmod 700 {}", shell_quote(dir));
        if meta.uid() != me && meta.uid() != 0 {
            fix = format!("chown {me} {} && {fix}", shell_quote(dir));
        }
        Err(Insecure {
            path: dir.to_path_buf(),
            detail: wrong.join("; "),
            fix,
        })
    }
    #[cfg(windows)]
    {
        if !dir.exists() {
            return Ok(());
        }
        match super::windows::others_may_write(dir) {
            Ok(None) => Ok(()),
            Ok(Some(who)) => Err(Insecure {
                path: dir.to_path_buf(),
                detail: format!("{who} may write"),
                fix: format!(
                    "icacls \"{}\" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F %USERNAME%:(OI)(CI)F",
                    dir.display()
                ),
            }),
            Err(e) => Err(Insecure {
                path: dir.to_path_buf(),
                detail: format!("its permissions cannot be read: {e}"),
                fix: format!("icacls \"{}\"", dir.display()),
            }),
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Who owns a file, as the OS says (not as the file claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The account's name, if the OS can name it.
    pub name: Option<String>,
    /// The account's id: `uid 1000` (Unix), a SID string (Windows).
    pub id: String,
    /// Whether the owner is root / SYSTEM / Administrators.
    pub admin: bool,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} ({})", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// Whether `file` was written by the owner of `dir` or by an administrator
/// (root; on Windows SYSTEM or Administrators), and who its owner is. On
/// Unix the file's uid decides; on Windows its owner SID.
pub fn written_by_owner_or_admin(file: &Path, dir: &Path) -> io::Result<(bool, Owner)> {
    #[cfg(unix)]
    {
        let (f, d) = (file_uid(file)?, file_uid(dir)?);
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(f))
            .ok()
            .flatten()
            .map(|u| u.name);
        let owner = Owner {
            name,
            id: format!("uid {f}"),
            admin: f == 0,
        };
        Ok((f == d || f == 0, owner))
    }
    #[cfg(windows)]
    {
        super::windows::owner_trust(file, dir)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (file, dir);
        Ok((
            true,
            Owner {
                name: None,
                id: "unknown".into(),
                admin: false,
            },
        ))
    }
}

/// The owner of a file, for deciding whom to believe: on Unix its uid.
#[cfg(unix)]
pub fn file_uid(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(path)?.uid())
}

/// This process's effective user id.
#[cfg(unix)]
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(unix)]
fn shell_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_folders_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        create_private_dir_all(&deep).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(check_private_dir(&deep), Ok(()));
    }

    #[test]
    fn a_folder_others_may_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("open dir");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_private_dir(&d).unwrap_err();
        assert!(
            e.detail.contains("mode 0777: group and others may write"),
            "{e}"
        );
        assert_eq!(e.fix, format!("chmod 700 '{}'", d.display()));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(
            check_private_dir(&d)
                .unwrap_err()
                .detail
                .contains("its group")
        );
        // Readable by others is not writable by others.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_private_dir(&d), Ok(()));
    }
}
