//! placeholder
use crate::kinds::KindFn;
/// k
pub const KIND: KindFn = KindFn {
    name: "x.agent_jobs",
    summary: "",
    build: |_| Err(crate::ParamError::field("x", "x")),
};
