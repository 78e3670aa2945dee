//! A stand-in for the `upshift` binary in this crate's tests and benches.
//! It does what `upshift` will do for remote hosts (phase 2):
//! `__remote` (the host side) and `__guard` (child containment). Tests
//! install it on their sshd "hosts" as `upshift`.
//!
//! It also has `__test-coordinator`: a coordinator in a process of its own
//! that starts one ticket and prints what it follows, so a test can SIGKILL
//! a real coordinator mid-step. It reads its job as JSON on stdin.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use upshift_remote::RemoteHost;
use upshift_remote::client::{
    ClientOptions, HostConfig, NoRedaction, TicketEvent, TransportConfig,
};
use upshift_remote::protocol::{Cursor, StartRequest};
use upshift_remote::transport::ssh::SshConfig;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let code = match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("__remote") => upshift_remote::main(args.collect()),
        Some("__guard") => upshift_steps::child::guard_main(args.collect()),
        Some("__test-coordinator") => test_coordinator(),
        _ => {
            eprintln!("upshift-remote-stub: a test stand-in for `upshift` (__remote, __guard)");
            2
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[derive(Deserialize)]
struct Job {
    name: String,
    address: String,
    port: u16,
    user: String,
    identity_file: String,
    known_hosts_file: String,
    work_dir: String,
    binary: String,
    request: StartRequest,
}

/// Starts the job's ticket and prints one line per event:
/// `started new|existing`, `output <json string>`, `checkpoint <seq>`,
/// `end <debug>`.
fn test_coordinator() -> i32 {
    let job: Job = match serde_json::from_reader(std::io::stdin()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bad job: {e}");
            return 2;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut ssh = SshConfig::new(
            job.address,
            job.user,
            job.identity_file,
            job.known_hosts_file,
        );
        ssh.port = job.port;
        ssh.connect_timeout = Duration::from_secs(5);
        let mut opts = ClientOptions::new(job.binary);
        opts.poll_wait = Duration::from_millis(500);
        let host = match RemoteHost::new(
            HostConfig {
                name: job.name,
                transport: TransportConfig::Ssh(ssh),
                work_dir: job.work_dir,
            },
            opts,
        ) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        };
        match host.start(&job.request).await {
            Ok(s) => println!("started {s:?}"),
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        }
        let mut f = host.follow(
            job.request.ticket.clone(),
            Cursor::default(),
            Arc::new(NoRedaction),
        );
        loop {
            match f.next().await {
                Ok(Some(TicketEvent::Output(t))) => {
                    println!("output {}", serde_json::to_string(&t).unwrap_or_default())
                }
                Ok(Some(TicketEvent::Checkpoint(c))) => println!("checkpoint {}", c.seq),
                Ok(Some(TicketEvent::Ended(e))) => println!("end {e:?}"),
                Ok(Some(other)) => println!("event {other:?}"),
                Ok(None) => return 0,
                Err(e) => {
                    eprintln!("{e}");
                    return 1;
                }
            }
        }
    })
}
