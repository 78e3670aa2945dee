//! placeholder
use crate::kinds::KindFn;
/// k
pub const KIND: KindFn = KindFn {
    name: "x.backup",
    summary: "",
    build: |_| Err(crate::ParamError::field("x", "x")),
};
