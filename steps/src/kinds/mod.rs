//! The built-in step kinds, one file each.

use std::sync::Arc;

use crate::{Kind, LocalPath, ParamError, Step};

pub mod component;
pub mod file_backup;
pub mod foreach;
pub mod manual;
pub mod process;
pub mod reboot;
pub mod sleep;
pub mod sql;

/// A kind defined by a name, a summary and a build function.
pub struct KindFn {
    /// Name used in plans.
    pub name: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Builds a step from its `with` table.
    pub build: fn(&toml::Table) -> Result<Box<dyn Step>, ParamError>,
    /// Parameters naming files or folders ([`Kind::local_paths`]).
    pub local_paths: &'static [LocalPath],
}

impl Kind for KindFn {
    fn name(&self) -> &'static str {
        self.name
    }
    fn summary(&self) -> &'static str {
        self.summary
    }
    fn build(&self, with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
        (self.build)(with)
    }
    fn local_paths(&self) -> &'static [LocalPath] {
        self.local_paths
    }
}

/// Every built-in kind.
pub fn all() -> Vec<Arc<dyn Kind>> {
    let mut kinds: Vec<Arc<dyn Kind>> = vec![
        Arc::new(process::KIND),
        Arc::new(foreach::KIND),
        Arc::new(manual::KIND),
        Arc::new(sleep::KIND),
        Arc::new(reboot::KIND),
        Arc::new(file_backup::BACKUP),
        Arc::new(file_backup::RESTORE),
    ];
    kinds.extend(sql::kinds());
    kinds.extend(component::kinds());
    kinds
}
