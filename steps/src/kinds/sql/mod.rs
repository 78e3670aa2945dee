//! SQL Server step kinds (the database phase), one file each, all built on
//! [`connection`]: `sql.exec`, `sql.script`, `sql.backup`, `sql.restore`,
//! `db.check`, `db.update`, `sql.agent_jobs.remove`. Parameters, outputs and
//! rules: `docs/steps-sql.md`.

use std::sync::Arc;

use crate::Kind;

pub mod agent_jobs;
pub mod backup;
pub mod connection;
pub mod db_check;
pub mod db_update;
pub mod exec;
pub mod go_split;
pub mod preflight;
pub mod progress;
pub mod quote;
pub mod restore;
pub mod script;

/// The SQL Server kinds.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    vec![
        Arc::new(exec::KIND),
        Arc::new(script::KIND),
        Arc::new(backup::KIND),
        Arc::new(restore::KIND),
        Arc::new(db_check::KIND),
        Arc::new(db_update::KIND),
        Arc::new(agent_jobs::KIND),
    ]
}
