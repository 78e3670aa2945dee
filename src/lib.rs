//! upshift: runs long, interruptible upgrade procedures as a journaled
//! dependency graph of steps.
//!
//! - [`plan`]: TOML plan → validated DAG ([`plan::Plan`]).
//! - [`state`]: [`state::RunState`], a pure fold over a run's events.
//! - [`decide`]: the scheduler's decisions, a pure function of plan + state.
//! - [`engine`]: the tokio executor and the group-commit journal writer.
//! - [`cli`], [`ui`], [`logging`], [`report`]: the command line and what it shows.
//! - [`support`]: export/import, replay, HTML report, diff, `--follow`.
//!
//! ```
//! use upshift::plan::{parse, LoadOptions};
//! let text = r#"
//! name = "demo"
//! [steps.a]
//! kind = "sleep"
//! with = { duration = "0s" }
//! [steps.b]
//! kind = "sleep"
//! needs = ["a"]
//! with = { duration = "0s" }
//! "#;
//! let plan = parse("demo.toml".as_ref(), text, &upshift_steps::registry(), &LoadOptions::default()).unwrap();
//! assert_eq!(plan.order, ["a", "b"]);
//! ```

pub mod cli;
pub mod decide;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnostics;
pub mod engine;
pub mod error;
pub mod logging;
pub mod plan;
pub mod reboot;
pub mod refs;
pub mod report;
pub mod rules;
pub mod state;
pub mod support;
pub mod ui;
