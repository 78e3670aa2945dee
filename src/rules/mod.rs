//! Rule sets that a plan names with `rules = [...]`.

pub mod teammanager;
