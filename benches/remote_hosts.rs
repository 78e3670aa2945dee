//! Remote hosts through the engine (issue 10): real OpenSSH `sshd`
//! processes on loopback (the lab of upshift-remote's tests), the in-process
//! engine installing the `upshift` binary on them. Each figure comes with
//! its baseline measured in the same run:
//!
//! - per-step overhead of a remote `process` step (`true`) vs the same step
//!   run locally: (chain of 21 − chain of 1) / 20, for both;
//! - re-attach after a dropped connection (the coordinator's `ssh` process
//!   for the host killed mid-step: the outage the follower reports, from
//!   the lost connection to the first answer) vs a first connection to a
//!   host;
//! - 8 hosts in parallel (a chain of 5 × 200 ms steps on each) vs 1 host
//!   (the same chain);
//! - `upshift preflight` of 16 settings-file steps on an ssh host (connect,
//!   host checks, each step's checks run on the host) vs the same steps on
//!   the coordinator, and on the host with `--per-host 8` vs 1.
//!
//! `cargo bench --bench remote_hosts` (skips loudly without sshd).

#[cfg(unix)]
#[path = "../remote/tests/remote/support/sshd.rs"]
#[allow(missing_docs)]
mod sshd;
#[path = "common/summary.rs"]
#[allow(dead_code)]
mod summary;

fn main() {
    #[cfg(unix)]
    bench::main();
}

#[cfg(unix)]
mod bench {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use upshift::engine::{Config, Engine, Exit, Quiet};
    use upshift::plan::{LoadOptions, parse};
    use upshift_journal::{Actor, Event, Journal, Outcome, RunId};

    use crate::sshd;
    use crate::summary::{Goal, summary};

    const BIN: &str = env!("CARGO_BIN_EXE_upshift");

    fn hosts_toml(lab: &sshd::Lab, n: usize) -> String {
        lab.hosts_toml(n)
    }

    /// A chain of `len` steps running `script`, on `host` (None: locally).
    fn chain(prefix: &str, len: usize, host: Option<&str>, script: &str) -> String {
        let mut s = String::new();
        for i in 0..len {
            s.push_str(&format!(
                "[steps.{prefix}{i}]\nkind = \"process\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"{script}\"] }}\n"
            ));
            if let Some(h) = host {
                s.push_str(&format!("host = \"{h}\"\n"));
            }
            if i > 0 {
                s.push_str(&format!("needs = [\"{prefix}{}\"]\n", i - 1));
            }
        }
        s
    }

    /// Runs a plan to its end in a fresh journal under `dir`; the wall time
    /// and the journal's events.
    fn run(
        rt: &tokio::runtime::Runtime,
        dir: &Path,
        text: &str,
        during: impl FnOnce() + Send + 'static,
    ) -> (Duration, Vec<upshift_journal::Envelope>) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let journal_dir = dir.join("journal");
        let journal = Journal::open(&journal_dir).unwrap();
        let runid = RunId::new();
        let registry = upshift_steps::registry();
        let plan = parse(
            &dir.join("bench.toml"),
            text,
            &registry,
            &LoadOptions::default(),
        )
        .expect("plan parses");
        let cfg = Config {
            registry,
            concurrency: Some(16),
            guard_program: Some(BIN.into()),
            work_root: dir.join("work"),
            actor: Actor::default(),
            observer: Arc::new(Quiet),
            inbox: None,
            journal_dir: None,
            boot: Default::default(),
        };
        let t = Instant::now();
        let mut eng = Engine::new(plan, cfg, journal, runid, &[], BTreeMap::new());
        let side = std::thread::spawn(during);
        let exit = rt.block_on(eng.start(BTreeMap::new())).expect("engine");
        let took = t.elapsed();
        side.join().unwrap();
        assert_eq!(exit, Exit::Finished(Outcome::Succeeded), "{text}");
        drop(eng);
        let events = Journal::open_read_only(&journal_dir)
            .unwrap()
            .read_run(runid)
            .unwrap();
        (took, events)
    }

    fn ms(d: Duration) -> String {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    pub fn main() {
        if std::env::args().any(|a| a == "--list") {
            return;
        }
        if std::env::var_os("UPSHIFT_BENCH_TRACE").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("upshift_remote=debug")
                .with_writer(std::io::stderr)
                .init();
        }
        let Some(lab) = sshd::Lab::start_empty(8) else {
            return;
        };
        for i in 0..8 {
            lab.seed(i, Path::new(BIN));
        }
        let lab = Arc::new(std::sync::Mutex::new(lab));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let (hosts1, hosts8) = {
            let l = lab.lock().unwrap();
            (hosts_toml(&l, 1), hosts_toml(&l, 8))
        };

        // `UPSHIFT_BENCH_ONLY=overhead|reattach|hosts` runs one part.
        let only = std::env::var("UPSHIFT_BENCH_ONLY").unwrap_or_default();
        let part = |name: &str| only.is_empty() || only == name;

        // 1. Per-step overhead: remote vs local, chains of 21 and 1.
        let reps = 3;
        let per_step = |host: Option<&str>| {
            let hosts = if host.is_some() { hosts1.as_str() } else { "" };
            let mut long = Vec::new();
            let mut short = Vec::new();
            for _ in 0..reps {
                let text = format!("name = \"b\"\n{hosts}{}", chain("s", 21, host, "true"));
                long.push(run(&rt, &dir.join("p"), &text, || {}).0);
                let text = format!("name = \"b\"\n{hosts}{}", chain("s", 1, host, "true"));
                short.push(run(&rt, &dir.join("p"), &text, || {}).0);
            }
            (median(long).saturating_sub(median(short))) / 20
        };
        if part("overhead") {
            let local = per_step(None);
            let remote = per_step(Some("h1"));
            summary(
                "remote step overhead (engine, ssh) vs local step",
                &ms(remote),
                &ms(local),
                remote.as_secs_f64() / local.as_secs_f64(),
                Goal::Report,
            );
        }

        // 2. Re-attach after a dropped connection vs a first connection.
        if part("reattach") {
            let first = {
                let l = lab.lock().unwrap();
                let plan = parse(
                    &dir.join("h.toml"),
                    &format!(
                        "name = \"h\"\n{hosts1}{}",
                        chain("s", 1, Some("h1"), "true")
                    ),
                    &upshift_steps::registry(),
                    &LoadOptions::default(),
                )
                .unwrap();
                drop(l);
                let mut times = Vec::new();
                for _ in 0..3 {
                    let mut opts = upshift_remote::client::ClientOptions::new(BIN);
                    opts.poll_wait = Duration::from_millis(500);
                    let host = upshift_remote::RemoteHost::new(
                        upshift::remote::host_config(&plan.hosts["h1"]),
                        opts,
                    )
                    .unwrap();
                    let t = Instant::now();
                    rt.block_on(host.connect()).expect("connects");
                    times.push(t.elapsed());
                    rt.block_on(host.close());
                }
                median(times)
            };
            let mut outages = Vec::new();
            for _ in 0..3 {
                let text = format!(
                    "name = \"r\"\n{hosts1}{}",
                    chain("s", 1, Some("h1"), "sleep 4")
                );
                // The connection is cut on the coordinator's side: its `ssh`
                // process for h1 (whose command line names h1's work folder)
                // is SIGKILLed; the host stays up, so the outage is the
                // detection plus the reconnection (backoff 0.25 s, ssh
                // handshake, hello, poll).
                let work = lab.lock().unwrap().hosts[0].work_dir.display().to_string();
                let (_, events) = run(&rt, &dir.join("r"), &text, move || {
                    std::thread::sleep(Duration::from_millis(1500));
                    for pid in sshd::processes_with_cmdline(&work) {
                        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .unwrap_or_default();
                        if comm.trim() == "ssh" {
                            sshd::kill9(pid);
                        }
                    }
                });
                for e in &events {
                    if let Event::Note { text } = &e.event {
                        println!("  note: {text}");
                    }
                }
                let outage = events.iter().find_map(|e| match &e.event {
                    Event::Note { text } if text.contains("reconnected after") => text
                        .split("reconnected after ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<f64>()
                        .ok(),
                    _ => None,
                });
                if let Some(s) = outage {
                    outages.push(Duration::from_secs_f64(s));
                }
            }
            if outages.is_empty() {
                println!("re-attach: no reconnection seen (the connection survived?)");
            } else {
                let reattach = median(outages);
                summary(
                    "re-attach after a dropped connection (engine) vs first connection",
                    &ms(reattach),
                    &ms(first),
                    reattach.as_secs_f64() / first.as_secs_f64(),
                    Goal::AtMost(2.0),
                );
            }
        }

        // 3. 8 hosts in parallel vs 1.
        if part("hosts") {
            let script = "sleep 0.2";
            let one = format!(
                "name = \"one\"\n{hosts1}{}",
                chain("a", 5, Some("h1"), script)
            );
            let mut eight = format!("name = \"eight\"\n{hosts8}");
            for i in 0..8 {
                eight.push_str(&chain(
                    &format!("c{i}_"),
                    5,
                    Some(&format!("h{}", i + 1)),
                    script,
                ));
            }
            let mut t1 = Vec::new();
            let mut t8 = Vec::new();
            for _ in 0..3 {
                t1.push(run(&rt, &dir.join("one"), &one, || {}).0);
                t8.push(run(&rt, &dir.join("eight"), &eight, || {}).0);
            }
            let (t1, t8) = (median(t1), median(t8));
            summary(
                "8 hosts in parallel (5 x 200 ms steps each) vs 1 host",
                &ms(t8),
                &ms(t1),
                t8.as_secs_f64() / t1.as_secs_f64(),
                Goal::AtMost(1.5),
            );
        }
        // 4. Preflight on an ssh host vs on the coordinator.
        if part("preflight") {
            let settings = dir.join("AppSettings.config");
            std::fs::write(
                &settings,
                "<appSettings><add key=\"InstanzName\" value=\"TM\"/></appSettings>",
            )
            .unwrap();
            let steps = |host: Option<&str>| {
                let mut s = String::new();
                for i in 0..16 {
                    s.push_str(&format!(
                        "[steps.s{i}]\nkind = \"config.appsettings\"\n{}\
                         with = {{ file = '{}', set = {{ InstanzName = \"TM\" }} }}\n",
                        host.map(|h| format!("host = \"{h}\"\n"))
                            .unwrap_or_default(),
                        settings.display()
                    ));
                }
                s
            };
            let load = |text: &str| {
                parse(
                    &dir.join("pf.toml"),
                    text,
                    &upshift_steps::registry(),
                    &LoadOptions::default(),
                )
                .expect("plan parses")
            };
            let remote = load(&format!("name = \"pf\"\n{hosts1}{}", steps(Some("h1"))));
            let local = load(&format!("name = \"pf\"\n{}", steps(None)));
            let time = |plan: &upshift::plan::Plan, per_host: usize| {
                let opts = upshift::preflight::Options {
                    per_host,
                    remote_binary: Some(BIN.into()),
                    ..Default::default()
                };
                let t = Instant::now();
                let r = rt.block_on(upshift::preflight::run_async(plan, &opts));
                let took = t.elapsed();
                assert!(r.ready, "{}", upshift::preflight::text(&r));
                took
            };
            // The connection alone (ssh handshake, hello), as preflight
            // opens it.
            let connect = || {
                let host = upshift_remote::RemoteHost::new(
                    upshift::remote::host_config(&remote.hosts["h1"]),
                    upshift_remote::client::ClientOptions::new(BIN),
                )
                .unwrap();
                let t = Instant::now();
                rt.block_on(host.connect()).expect("connects");
                rt.block_on(host.close());
                t.elapsed()
            };
            let (mut r8, mut r1, mut l8, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..5 {
                r8.push(time(&remote, 8));
                r1.push(time(&remote, 1));
                l8.push(time(&local, 8));
                c.push(connect());
            }
            let (r8, r1, l8, c) = (median(r8), median(r1), median(l8), median(c));
            summary(
                "preflight of 16 steps on an ssh host vs connecting to it alone (ssh + hello)",
                &ms(r8),
                &ms(c),
                r8.as_secs_f64() / c.as_secs_f64(),
                Goal::Report,
            );
            summary(
                "preflight of 16 steps on an ssh host (connect + checks on the host) vs on the coordinator",
                &ms(r8),
                &ms(l8),
                r8.as_secs_f64() / l8.as_secs_f64(),
                Goal::Report,
            );
            summary(
                "preflight of 16 steps on an ssh host, --per-host 8 vs 1",
                &ms(r8),
                &ms(r1),
                r8.as_secs_f64() / r1.as_secs_f64(),
                Goal::Report,
            );
        }
        drop(lab);
    }
}
