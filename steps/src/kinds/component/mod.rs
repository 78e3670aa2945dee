//! Component-phase step kinds (installs, config edits, services...).
//!
//! One file per kind; `xml` is the byte-exact splicing code shared by the
//! config kinds, and this module holds the small file helpers they share.
//! See `docs/steps-components.md` for parameters, outputs, probes and
//! compensations, and for what is verified on Linux versus only on Windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Kind, StepError};

pub mod appsettings;
pub mod cert;
pub mod compare;
pub mod expect;
pub mod http;
pub mod ich;
pub mod log_watch;
pub mod lync;
pub mod msi;
pub mod powershell;
pub mod registry;
pub mod service;
pub mod xml;

/// The component-phase kinds.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    vec![
        Arc::new(appsettings::KIND),
        Arc::new(compare::KIND),
        Arc::new(expect::KIND),
        Arc::new(service::KIND),
        Arc::new(msi::INSTALL),
        Arc::new(msi::UNINSTALL),
        Arc::new(powershell::KIND),
        Arc::new(cert::KIND),
        Arc::new(registry::KIND),
        Arc::new(lync::KIND),
        Arc::new(http::KIND),
        Arc::new(ich::KIND),
        Arc::new(log_watch::KIND),
    ]
}

/// Reads a whole file; the error names the path.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, StepError> {
    std::fs::read(path).map_err(|e| {
        StepError::fatal(format!(
            "cannot read {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                " (is the component installed, and the path right?)"
            } else {
                ""
            }
        ))
    })
}

/// Writes `bytes` to `path` atomically ([`upshift_fsutil::atomic_write`]:
/// the target keeps its permissions; a crash leaves the old or the new
/// file); the error names the path.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    upshift_fsutil::atomic_write(path, bytes)
        .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", path.display())))
}

/// A timestamped copy of `path` in `dir` (created if needed); returns the
/// copy's path. The copy is flushed to disk before this returns.
pub(crate) fn save_copy(path: &Path, dir: &Path, tag: &str) -> Result<PathBuf, StepError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let copy = dir.join(format!("{name}.{tag}.{stamp}"));
    let bytes = read_file(path)?;
    atomic_write(&copy, &bytes)?;
    Ok(copy)
}

/// Hides values of keys that look like secrets in output and dry runs.
pub(crate) fn shown_value(key: &str, value: &str) -> String {
    let k = key.to_ascii_lowercase();
    if [
        "password",
        "pwd",
        "secret",
        "token",
        "apikey",
        "connectionstring",
    ]
    .iter()
    .any(|s| k.contains(s))
    {
        "(hidden)".to_string()
    } else {
        format!("{value:?}")
    }
}

/// The checkpoint/record text format shared by the kinds here: `key=value`
/// lines (values must not contain a newline).
pub(crate) fn encode_lines(pairs: &[(&str, String)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Reads [`encode_lines`] back.
pub(crate) fn decode_lines(data: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A context that keeps a child's output to itself instead of adding it to
/// the step's captured output (for polls such as `systemctl is-active`,
/// which would otherwise fill the output with one line per poll).
pub(crate) struct Quiet<'a> {
    inner: &'a dyn crate::StepContext,
    captured: std::sync::Mutex<String>,
}

impl<'a> Quiet<'a> {
    pub(crate) fn new(inner: &'a dyn crate::StepContext) -> Quiet<'a> {
        Quiet {
            inner,
            captured: std::sync::Mutex::new(String::new()),
        }
    }

    /// Everything the children wrote (stdout and stderr).
    pub(crate) fn take(&self) -> String {
        std::mem::take(&mut *self.captured.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait::async_trait]
impl crate::StepContext for Quiet<'_> {
    fn step_id(&self) -> &str {
        self.inner.step_id()
    }
    fn run_id(&self) -> &str {
        self.inner.run_id()
    }
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    fn resume_from(&self) -> Option<Vec<u8>> {
        self.inner.resume_from()
    }
    async fn checkpoint(&self, data: Vec<u8>, done: u64, total: u64) -> Result<(), StepError> {
        self.inner.checkpoint(data, done, total).await
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        self.inner.progress(done, total, message);
    }
    fn output(&self, text: &str) {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(text);
    }
    fn approved(&self) -> bool {
        self.inner.approved()
    }
    fn recorded_outputs(&self) -> crate::Outputs {
        self.inner.recorded_outputs()
    }
    fn work_dir(&self) -> PathBuf {
        self.inner.work_dir()
    }
    fn guard_program(&self) -> Option<PathBuf> {
        self.inner.guard_program()
    }
}

/// Runs a child quietly; returns (exit code, everything it wrote).
pub(crate) async fn run_quiet(
    ctx: &dyn crate::StepContext,
    spec: &crate::child::ChildSpec,
) -> Result<(i32, String), StepError> {
    let quiet = Quiet::new(ctx);
    let exit = crate::child::run(&quiet, spec).await?;
    Ok((exit.code, quiet.take()))
}
