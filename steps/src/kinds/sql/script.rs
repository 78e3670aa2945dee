//! placeholder
use crate::kinds::KindFn;
/// k
pub const KIND: KindFn = KindFn {
    name: "x.script",
    summary: "",
    build: |_| Err(crate::ParamError::field("x", "x")),
};
