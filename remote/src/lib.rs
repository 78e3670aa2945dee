//! Runs upshift steps on other hosts over SSH, with the engine's local
//! guarantees: nothing runs twice, every step survives a dropped connection,
//! a crashed coordinator re-attaches, a crashed host reads as interrupted.
//!
//! - [`transport`]: how a host is reached ([`transport::Transport`]; the
//!   system OpenSSH client, or the coordinator itself).
//! - [`client`]: the coordinator's side ([`RemoteHost`]): install the binary
//!   by hash, one session per host, start tickets, follow them.
//! - [`serve`] and [`runner`]: the host's side, both inside the upshift
//!   binary (`upshift __remote serve|run`, dispatched by [`main`]).
//! - [`ticket`]: the ticket folder on the host, the contract between them.
//!
//! The steps crate is the only upshift crate this one knows: the engine
//! drives it (journal the ticket, start, follow, journal what comes back).
//!
//! ```no_run
//! # async fn demo() -> Result<(), upshift_remote::RemoteError> {
//! use std::sync::Arc;
//! use upshift_remote::client::{ClientOptions, HostConfig, NoRedaction, TransportConfig};
//! use upshift_remote::transport::ssh::SshConfig;
//! use upshift_remote::protocol::{Cursor, StartRequest, StepOp, TicketId};
//! use upshift_remote::RemoteHost;
//!
//! let host = RemoteHost::new(
//!     HostConfig {
//!         name: "lync".into(),
//!         transport: TransportConfig::Ssh(SshConfig::new(
//!             "lyncfe01.corp.example", "corp\\tm-admin",
//!             "C:/upshift/keys/id_ed25519", "C:/upshift/known_hosts",
//!         )),
//!         work_dir: "C:/ProgramData/upshift-remote".into(),
//!     },
//!     ClientOptions::new(std::env::current_exe().unwrap()),
//! )?;
//! let ticket = TicketId::new("run1-smd_install-1").unwrap(); // journaled first
//! host.start(&StartRequest {
//!     ticket: ticket.clone(),
//!     run_id: "run1".into(), step_id: "smd_install".into(), attempt: 1,
//!     op: StepOp::Run, kind: "process".into(),
//!     with_toml: "program = \"cmd\"\nargs = [\"/c\", \"echo\", \"hi\"]\n".into(),
//!     secrets: vec![], resume_from: None, approved: false,
//!     recorded_outputs: Default::default(), timeout_ms: None,
//! }).await?;
//! let mut follow = host.follow(ticket, Cursor::default(), Arc::new(NoRedaction));
//! while let Some(event) = follow.next().await? {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub mod client;
pub mod error;
pub mod protocol;
pub mod runner;
pub mod serve;
pub mod sys;
pub mod ticket;
pub mod transport;

pub use client::RemoteHost;
pub use error::RemoteError;

const USAGE: &str = "usage (internal, started by the coordinator over ssh):\n  \
    upshift __remote serve --work-dir DIR\n  \
    upshift __remote run --ticket-dir DIR";

/// `upshift __remote ...`: the host side. `args` are the arguments after
/// `__remote`; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut it = args.into_iter();
    let mode = it.next();
    let flag = it.next();
    let value = it.next().map(PathBuf::from);
    match (
        mode.as_ref().and_then(|m| m.to_str()),
        flag.as_ref().and_then(|f| f.to_str()),
        value,
    ) {
        (Some("serve"), Some("--work-dir"), Some(dir)) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("upshift __remote serve: cannot start a runtime: {e}");
                    return 3;
                }
            };
            let code = rt.block_on(serve::serve(dir));
            // stdin's reader thread may still be blocked; do not wait for it.
            rt.shutdown_timeout(Duration::from_millis(100));
            code
        }
        (Some("run"), Some("--ticket-dir"), Some(dir)) => runner::run_main(dir),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}
