//! SQL Server step kinds (database phase). See the README, "Step kinds".

use std::sync::Arc;

use crate::Kind;

/// The SQL Server kinds.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    Vec::new()
}
