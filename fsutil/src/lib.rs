//! File-system mechanisms that several crates of upshift need exactly once:
//!
//! - [`atomic_write`] / [`atomic_write_private`]: replace a file so that a
//!   crash leaves the old bytes or the new, never a mix (a temporary file in
//!   the same folder, flushed, renamed over the target, the rename made
//!   durable);
//! - [`rename_durable`]: the rename step alone, for callers that build the
//!   temporary file themselves (the journal creates a redb file that way);
//! - [`create_private_dir_all`] and [`check_private_dir`]: folders only
//!   their owner may use (the journal folder, its logs, work and inbox), and
//!   the refusal of one that others may write into.
//!
//! Its own crate because the journal, the steps and the engine all need it
//! and the journal must not depend on the steps crate (nor the steps crate on
//! the journal).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("settings.json");
//! upshift_fsutil::atomic_write(&p, b"{}").unwrap();
//! assert_eq!(std::fs::read(&p).unwrap(), b"{}");
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

mod private;
#[cfg(windows)]
mod windows;

pub use private::{
    Insecure, Owner, check_private_dir, create_private_dir_all, written_by_owner_or_admin,
};
#[cfg(unix)]
pub use private::{effective_uid, file_uid};

/// Bytes free for an unprivileged writer on the file system holding
/// `path` (a file or folder that exists; else its nearest existing parent):
/// what a "disk full" message tells the operator.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    #[cfg(unix)]
    {
        let st = nix::sys::statvfs::statvfs(p).map_err(io::Error::from)?;
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
    #[cfg(windows)]
    {
        windows::free_bytes(p)
    }
}

/// Replaces `path` with `bytes` atomically and durably. A file that exists
/// keeps its permissions; a new one gets the process's defaults (umask,
/// inherited ACL). Returns only once the new bytes and the rename are on
/// disk.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_replace(path, bytes, false)
}

/// [`atomic_write`] for a file only its owner may read: Unix mode 0600
/// (Windows: the file inherits its folder's owner-only ACL).
pub fn atomic_write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_replace(path, bytes, true)
}

/// A name for a temporary file beside `path`, unique in this process and
/// among processes (pid), hidden on Unix.
pub fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}.upshift-{}-{n}.tmp", std::process::id()))
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn write_replace(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if !private && let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        rename_durable(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` over `to` and returns once the rename is durable: on Unix
/// the folder is fsync'd after the rename; on Windows `MoveFileExW` with
/// `MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH` returns only when
/// the move is on disk. `from` must already be flushed (it is the caller's
/// file).
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(windows)]
    {
        windows::move_replace_write_through(from, to)
    }
    #[cfg(not(windows))]
    {
        std::fs::rename(from, to)?;
        sync_dir(parent_of(to))
    }
}

/// Flushes a folder's entries (a rename or a creation in it) to disk. A
/// no-op on Windows, where folders cannot be opened for flushing and
/// [`rename_durable`] writes through instead.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        atomic_write(&p, b"first, longer").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_kept_or_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kept");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&p, b"y").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o640);
        let q = dir.path().join("private");
        atomic_write_private(&q, b"z").unwrap();
        assert_eq!(mode(&q), 0o600);
    }

    #[test]
    fn a_failed_write_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the rename fails after the temp was written.
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"keeps the folder non-empty").unwrap();
        assert!(atomic_write(&target, b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["d"]);
    }
}
