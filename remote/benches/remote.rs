//! Remote step costs over real sshd, each as a ratio against a baseline
//! measured in the same run:
//!
//! 1. per-step overhead: a no-op step (`sleep 0s`) started and followed to
//!    its end on an sshd host, vs the same step run in-process, vs the same
//!    ticket protocol through the local transport (no ssh);
//! 2. re-attach after a dropped connection: the time from a cut connection
//!    to the next answer (a new ssh connection + hello), vs a poll on a
//!    live connection;
//! 3. 8 hosts in parallel vs 1: the same sequence of steps on one host,
//!    and on each of 8 hosts at once.
//!
//! `cargo bench -p upshift-remote --bench remote`; `UPSHIFT_BENCH_REMOTE_STEPS`
//! sets the steps per measurement (default 40); `UPSHIFT_BENCH_SUMMARY`
//! names a file the SUMMARY lines are appended to. Figures: docs/remote.md.

#![allow(missing_docs)]

#[cfg(unix)]
#[path = "../tests/remote/support/sshd.rs"]
mod sshd;

#[cfg(unix)]
#[path = "../../benches/common/summary.rs"]
#[allow(dead_code)]
mod summary;

#[cfg(unix)]
fn main() {
    bench::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("SKIPPED: the remote benches need sshd (Unix)");
}

#[cfg(unix)]
mod bench {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use upshift_remote::RemoteHost;
    use upshift_remote::client::{
        ClientOptions, HostConfig, NoRedaction, TicketEvent, TransportConfig,
    };
    use upshift_remote::protocol::{Cursor, EndState, StartRequest, StepOp, TicketId};
    use upshift_steps::testing::TestContext;

    use crate::sshd::{Lab, kill9};
    use crate::summary::{Goal, summary};

    fn ms(d: Duration) -> String {
        if d < Duration::from_millis(1) {
            format!("{:.2}us", d.as_secs_f64() * 1e6)
        } else {
            format!("{:.2}ms", d.as_secs_f64() * 1000.0)
        }
    }

    fn sleep_step(ticket: &str, duration: &str) -> StartRequest {
        StartRequest {
            ticket: TicketId::new(ticket).unwrap(),
            run_id: "bench".into(),
            step_id: "noop".into(),
            attempt: 1,
            op: StepOp::Run,
            kind: "sleep".into(),
            with_toml: format!("duration = \"{duration}\"\n"),
            secrets: Vec::new(),
            resume_from: None,
            approved: false,
            recorded_outputs: Default::default(),
            timeout_ms: None,
        }
    }

    async fn run_remote(host: &RemoteHost, req: &StartRequest) {
        host.start(req).await.expect("start");
        let mut f = host.follow(req.ticket.clone(), Cursor::default(), Arc::new(NoRedaction));
        while let Some(ev) = f.next().await.expect("follow") {
            if let TicketEvent::Ended(end) = &ev {
                assert!(matches!(end, EndState::Succeeded { .. }), "{end:?}");
            }
        }
    }

    /// Mean time per step of `n` steps run one after the other.
    async fn per_step(host: &RemoteHost, tag: &str, n: usize, duration: &str) -> Duration {
        let began = Instant::now();
        for i in 0..n {
            run_remote(host, &sleep_step(&format!("{tag}-{i}"), duration)).await;
        }
        began.elapsed() / n as u32
    }

    fn options(poll_wait: Duration) -> ClientOptions {
        let mut o = Lab::options();
        o.poll_wait = poll_wait;
        o
    }

    pub fn main() {
        let steps: usize = std::env::var("UPSHIFT_BENCH_REMOTE_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        let Some(lab) = Lab::start(8) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // 1. Per-step overhead.
            let kinds = upshift_steps::registry();
            let with: toml::Table = toml::from_str("duration = \"0s\"").unwrap();
            let step = kinds["sleep"].build(&with).unwrap();
            let ctx = TestContext::new("noop", lab.root.path());
            let reps = 10_000u32;
            let began = Instant::now();
            for _ in 0..reps {
                step.run(&ctx).await.unwrap();
            }
            let in_process = began.elapsed() / reps;

            let local_dir = lab.root.path().join("local-work");
            let local = RemoteHost::new(
                HostConfig {
                    name: "local".into(),
                    transport: TransportConfig::Local,
                    work_dir: local_dir.display().to_string(),
                },
                options(Duration::from_secs(2)),
            )
            .unwrap();
            local.connect().await.unwrap();
            run_remote(&local, &sleep_step("warm", "0s")).await;
            let local_step = per_step(&local, "local", steps, "0s").await;

            let h1 = lab.remote_with_options(0, lab.ssh_config(0), options(Duration::from_secs(2)));
            let connect_began = Instant::now();
            h1.connect().await.unwrap();
            let first_connect = connect_began.elapsed();
            run_remote(&h1, &sleep_step("warm", "0s")).await;
            let ssh_step = per_step(&h1, "ssh", steps, "0s").await;
            summary(
                "remote no-op step over ssh vs the same step in-process",
                &ms(ssh_step),
                &ms(in_process),
                ssh_step.as_secs_f64() / in_process.as_secs_f64().max(1e-9),
                Goal::Report,
            );
            summary(
                "remote no-op step over ssh vs through the local transport (same protocol, no ssh)",
                &ms(ssh_step),
                &ms(local_step),
                ssh_step.as_secs_f64() / local_step.as_secs_f64(),
                Goal::AtMost(2.0),
            );

            // 2. Re-attach after a dropped connection: a long step runs; the
            // connection is cut (the ssh client killed); the next poll
            // reconnects.
            let long = sleep_step("long", "10m");
            h1.start(&long).await.unwrap();
            // Polls that answer at once: the reconnection is what is timed.
            let h1q = lab.remote_with_options(0, lab.ssh_config(0), options(Duration::ZERO));
            h1q.poll(&long.ticket, Cursor::default()).await.unwrap();
            let mut live = Duration::ZERO;
            let mut reattach = Duration::ZERO;
            let rounds = 10u32;
            for _ in 0..rounds {
                let t = Instant::now();
                h1q.poll(&long.ticket, Cursor::default()).await.unwrap();
                live += t.elapsed();
                let pid = h1q.session_local_pid().await.expect("an ssh session");
                kill9(pid);
                let t = Instant::now();
                // The first poll after the cut may fail (the loss is seen);
                // the caller (Follower) retries at once on the first loss.
                loop {
                    match h1q.poll(&long.ticket, Cursor::default()).await {
                        Ok(_) => break,
                        Err(e) if e.is_transient() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                reattach += t.elapsed();
            }
            let (live, reattach) = (live / rounds, reattach / rounds);
            summary(
                "re-attach after a dropped connection (new ssh + hello + poll) vs a poll on a live connection",
                &ms(reattach),
                &ms(live),
                reattach.as_secs_f64() / live.as_secs_f64(),
                Goal::Report,
            );
            summary(
                "re-attach vs the first connection of a coordinator",
                &ms(reattach),
                &ms(first_connect),
                reattach.as_secs_f64() / first_connect.as_secs_f64(),
                Goal::AtMost(2.0),
            );
            h1.abort(&long.ticket, "bench done").await.unwrap();

            // 3. 8 hosts in parallel vs 1: the same sequence of 200 ms steps.
            let seq = 5usize;
            let mut hosts = Vec::new();
            for i in 0..8 {
                let h = lab.remote(i);
                h.connect().await.unwrap();
                hosts.push(h);
            }
            let began = Instant::now();
            for j in 0..seq {
                run_remote(&hosts[0], &sleep_step(&format!("one-{j}"), "200ms")).await;
            }
            let one = began.elapsed();
            let began = Instant::now();
            let mut tasks = Vec::new();
            for h in &hosts {
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    for j in 0..seq {
                        run_remote(&h, &sleep_step(&format!("eight-{j}"), "200ms")).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let eight = began.elapsed();
            summary(
                "8 hosts in parallel (5 x 200 ms steps each) vs 1 host (the same 5 steps)",
                &ms(eight),
                &ms(one),
                eight.as_secs_f64() / one.as_secs_f64(),
                Goal::AtMost(1.5),
            );
            // The same with no-op steps: what the coordinator and the hosts'
            // CPU (shared here: 2 cores for 8 "hosts") can sustain.
            let began = Instant::now();
            per_step(&hosts[0], "one-noop", steps, "0s").await;
            let one = began.elapsed();
            let began = Instant::now();
            let mut tasks = Vec::new();
            for h in &hosts {
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    per_step(&h, "eight-noop", steps, "0s").await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let eight = began.elapsed();
            summary(
                &format!("8 hosts x {steps} no-op steps vs 1 host x {steps} (throughput scaling, 8 = ideal)"),
                &ms(eight),
                &ms(one),
                8.0 * one.as_secs_f64() / eight.as_secs_f64(),
                Goal::Report,
            );
            println!(
                "per step: in-process {}, local transport {}, ssh {}; first connect {}",
                ms(in_process),
                ms(local_step),
                ms(ssh_step),
                ms(first_connect)
            );
            for h in hosts {
                h.close().await;
            }
            h1.close().await;
            h1q.close().await;
        });
        drop(lab);
    }
}
