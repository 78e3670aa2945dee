//! `file.backup` / `file.restore`: copy a file with SHA-256 verification.
//!
//! `file.backup`: `file` (the original), `to` (a folder; default the step's
//! work folder). The copy is written under a temporary name, flushed,
//! verified against the original's hash, then renamed into place; a re-run
//! that finds a verified copy does not copy again. Outputs: `path`,
//! `sha256`, `bytes`. Compensation: deletes the copy. Probe: the copy is
//! there and still has its hash.
//!
//! `file.restore`: `from` (a copy), `to` (where it goes back), the same way.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `file.backup` kind.
pub const BACKUP: KindFn = KindFn {
    name: "file.backup",
    summary: "copy a file aside with SHA-256 verification",
    build: build_backup,
    local_paths: &[],
};

/// The `file.restore` kind.
pub const RESTORE: KindFn = KindFn {
    name: "file.restore",
    summary: "copy a saved file back with SHA-256 verification",
    build: build_restore,
    local_paths: &[],
};

fn sha256_of(path: &Path) -> Result<(String, u64), StepError> {
    crate::hash::sha256_file(path)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))
}

/// Copies `from` to `to` atomically and verifies the copy; returns its hash.
fn verified_copy(from: &Path, to: &Path) -> Result<(String, u64), StepError> {
    let (want, bytes) = sha256_of(from)?;
    if to.exists() && sha256_of(to)?.0 == want {
        return Ok((want, bytes));
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let data = std::fs::read(from)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", from.display())))?;
    upshift_fsutil::atomic_write(to, &data)
        .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", to.display())))?;
    // Read back what is on disk, not the buffer: the copy is what a restore
    // will use.
    let (got, _) = sha256_of(to)?;
    if got != want {
        let _ = std::fs::remove_file(to);
        return Err(StepError::transient(format!(
            "copy of {} does not verify (sha256 {got}, expected {want})",
            from.display()
        )));
    }
    Ok((want, bytes))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupParams {
    file: PathBuf,
    to: Option<PathBuf>,
}

struct Backup {
    file: PathBuf,
    to: Option<PathBuf>,
}

fn build_backup(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: BackupParams = parse_params(with)?;
    Ok(Box::new(Backup {
        file: p.file,
        to: p.to,
    }))
}

impl Backup {
    fn dest(&self, ctx: &dyn StepContext) -> PathBuf {
        let dir = self.to.clone().unwrap_or_else(|| ctx.work_dir());
        let name = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        dir.join(format!("{name}.{}.bak", ctx.step_id()))
    }
}

#[async_trait::async_trait]
impl Step for Backup {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        vec![crate::preflight::files::check_path_for(
            ctx,
            &self.file,
            crate::preflight::files::Expect::File,
            "the file the step saves",
        )]
    }
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "copy {} to {} (verified by SHA-256)",
            self.file.display(),
            self.to
                .as_ref()
                .map(|t| t.display().to_string())
                .unwrap_or_else(|| "the step's work folder".into())
        )]
    }
    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let dest = self.dest(ctx);
        let (sha, bytes) = verified_copy(&self.file, &dest)?;
        ctx.output(&format!(
            "saved {} as {} ({bytes} bytes, sha256 {sha})\n",
            self.file.display(),
            dest.display()
        ));
        let mut o = Outputs::new();
        o.insert("path".into(), dest.display().to_string());
        o.insert("sha256".into(), sha);
        o.insert("bytes".into(), bytes.to_string());
        Ok(StepOutcome::with_outputs(o))
    }
    fn has_compensation(&self) -> bool {
        true
    }
    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        if let Some(p) = ctx.recorded_outputs().get("path") {
            match std::fs::remove_file(p) {
                Ok(()) => ctx.output(&format!("deleted the copy {p}\n")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StepError::fatal(format!("cannot delete {p}: {e}"))),
            }
        }
        Ok(())
    }
    async fn probe(&self, ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let rec = ctx.recorded_outputs();
        let (Some(p), Some(sha)) = (rec.get("path"), rec.get("sha256")) else {
            return Ok(Probe::Unknown);
        };
        let p = Path::new(p);
        if !p.exists() {
            return Ok(Probe::Differs(format!("the copy {} is gone", p.display())));
        }
        Ok(if sha256_of(p)?.0 == *sha {
            Probe::InPlace
        } else {
            Probe::Differs(format!(
                "the copy {} changed since it was made",
                p.display()
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreParams {
    from: PathBuf,
    to: PathBuf,
}

struct Restore {
    from: PathBuf,
    to: PathBuf,
}

fn build_restore(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: RestoreParams = parse_params(with)?;
    Ok(Box::new(Restore {
        from: p.from,
        to: p.to,
    }))
}

#[async_trait::async_trait]
impl Step for Restore {
    fn resources(&self) -> Vec<crate::Resource> {
        vec![crate::Resource::file(&self.to)]
    }
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "copy {} back to {} (verified by SHA-256)",
            self.from.display(),
            self.to.display()
        )]
    }
    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let (sha, bytes) = verified_copy(&self.from, &self.to)?;
        ctx.output(&format!("restored {} ({bytes} bytes)\n", self.to.display()));
        let mut o = Outputs::new();
        o.insert("path".into(), self.to.display().to_string());
        o.insert("sha256".into(), sha);
        Ok(StepOutcome::with_outputs(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestContext;

    #[tokio::test]
    async fn backs_up_verifies_skips_a_verified_copy_and_compensates() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("AppSettings.config");
        std::fs::write(&src, "<appSettings/>\r\n").unwrap();
        let with: toml::Table = toml::from_str(&format!("file = '{}'", src.display())).unwrap();
        let step = build_backup(&with).unwrap();
        let ctx = TestContext::new("save", dir.path().join("work"));
        let out = step.run(&ctx).await.unwrap();
        let copy = PathBuf::from(&out.outputs["path"]);
        assert_eq!(std::fs::read(&copy).unwrap(), b"<appSettings/>\r\n");
        // A re-run finds the verified copy.
        let again = step.run(&ctx).await.unwrap();
        assert_eq!(again.outputs, out.outputs);
        let mut ctx2 = TestContext::new("save", dir.path().join("work"));
        ctx2.recorded = out.outputs.clone();
        assert_eq!(step.probe(&ctx2).await.unwrap(), Probe::InPlace);
        std::fs::write(&copy, "tampered").unwrap();
        assert!(matches!(
            step.probe(&ctx2).await.unwrap(),
            Probe::Differs(_)
        ));
        step.compensate(&ctx2).await.unwrap();
        assert!(!copy.exists());
        // Restore puts a copy back.
        std::fs::write(&copy, "<appSettings/>\r\n").unwrap();
        std::fs::write(&src, "changed").unwrap();
        let with: toml::Table = toml::from_str(&format!(
            "from = '{}'\nto = '{}'",
            copy.display(),
            src.display()
        ))
        .unwrap();
        build_restore(&with).unwrap().run(&ctx).await.unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), b"<appSettings/>\r\n");
    }
}
