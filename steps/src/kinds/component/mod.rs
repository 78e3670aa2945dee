//! Component-phase step kinds (installs, config edits, services...).

use std::sync::Arc;

use crate::Kind;

/// The component-phase kinds.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    Vec::new()
}
