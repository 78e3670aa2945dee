//! upshift: runs long, interruptible upgrade procedures as a journaled
//! dependency graph of steps.
//!
//! Layers, each depending only on those below it (`tests/layout.rs` checks):
//!
//! - [`cli`] (clap types and dispatch) → [`commands`] (command bodies and
//!   everything they print) → [`app`] (workspace, runs, sessions,
//!   decisions, inbox), [`support`] (export, replay, report, diff,
//!   follow), `demo` → [`engine`] (tokio executor, group-commit writer) →
//!   [`decide`] and [`state`] (pure; [`state::sched`] is the index that
//!   keeps `decide` O(a step's edges) per transition) → [`plan`] (TOML →
//!   validated DAG),
//!   [`rules`], [`diagnostics`], [`refs`].
//! - [`ui`]: the terminal (progress bars, `status --follow`);
//!   [`report`]: text/JSON renderings of events and state;
//!   [`error`]: the one error type and the exit codes; [`logging`],
//!   [`reboot`].
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

pub mod app;
pub mod cli;
pub mod commands;
pub mod decide;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnostics;
pub mod engine;
pub mod error;
pub mod hosts;
pub mod logging;
pub mod plan;
pub mod preflight;
pub mod reboot;
pub mod refs;
pub mod remote;
pub mod report;
pub mod rules;
pub mod sitekeys;
pub mod state;
pub mod support;
pub mod ui;
