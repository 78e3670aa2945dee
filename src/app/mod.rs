//! The application layer: what a command does, without the command line
//! or the terminal.
//!
//! - [`workspace`]: a journal directory — open it for writing or reading,
//!   pick a run (id, prefix, the latest, the only unfinished one), fold it,
//!   the plan it pinned, whether a live engine holds it.
//! - [`run`]: engine sessions — start, resume (plan-change and drift
//!   checks), rollback, drift — returning the engine's [`Exit`](crate::engine::Exit).
//! - [`decisions`] and [`inbox`]: operator decisions, journaled directly or
//!   queued for a live engine; the inbox's writer and reader side by side.
//! - [`identity`]: the OS user and host journaled with every decision.
//! - [`next`]: the commands that continue a run, ready to paste (with
//!   `--journal DIR` unless the journal is the default one).
//! - [`notify`]: the plan's `[notify]` — a webhook (Teams) or command told
//!   when the run waits for an operator, fails, needs a reboot or ends.
//!
//! Every function returns data or a [`crate::error::Error`]; nothing here
//! parses arguments or prints. `src/commands/` renders what it returns.
//!
//! ```no_run
//! use upshift::app::{Workspace, workspace};
//! let ws = Workspace::new("/var/lib/upshift");
//! let j = ws.open_reader()?;
//! let run = workspace::pick_run(&j, None, false)?;
//! let state = workspace::fold_run(&j, run)?;
//! println!("{run}: {} events", state.events);
//! # Ok::<(), upshift::error::Error>(())
//! ```

pub mod decisions;
pub mod identity;
pub mod inbox;
pub mod next;
pub mod notify;
pub mod run;
pub mod workspace;

pub use workspace::Workspace;
