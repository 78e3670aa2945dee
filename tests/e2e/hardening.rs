//! Hardening: long kill soaks, damaged journal files through the binary, a
//! full disk, and a step that prints a gigabyte. Linux only (signals,
//! /proc, tmpfs).
//!
//! The soak's size is `UPSHIFT_SOAK_KILLS` (default 15 here: `crash.rs` has
//! the 40-kill soak CI relies on; this one adds the checks below and the
//! long form): `UPSHIFT_SOAK_KILLS=200 cargo test --release --test e2e
//! hardening::soak -- --nocapture`, or `benches/kill_soak.sh`.

#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use upshift_journal::Event;

use crate::support::{Sandbox, processes_with, wait_until};

/// Seeded LCG, so a failing soak replays with its seed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A demo-like plan: parallel branches, a checkpointed foreach, outputs
/// passed on, a retried step. Every step's command line carries `@TOKEN@`,
/// so leftover processes can be found.
const SOAK_PLAN: &str = r#"
name = "soak"
[steps.prepare]
kind = "process"
with = { program = "sh", args = ["-c", "sleep 0.05; echo prepare >> @M@/prepare; echo ready", "@TOKEN@"] }
[steps.backup]
kind = "process"
needs = ["prepare"]
with = { program = "sh", args = ["-c", "sleep 0.2; echo backup >> @M@/backup; echo @M@/backup.bak", "@TOKEN@"] }
[steps.loop]
kind = "foreach"
needs = ["prepare"]
with = { items = ["0","1","2","3","4","5","6","7","8","9"], program = "sh", args = ["-c", "sleep 0.05; echo $1 >> @M@/loop", "@TOKEN@", "${item}"] }
[steps.settle]
kind = "sleep"
needs = ["prepare"]
with = { duration = "150ms" }
[steps.update]
kind = "process"
needs = ["backup", "settle"]
retry = { attempts = 3, backoff = "10ms" }
with = { program = "sh", args = ["-c", "sleep 0.1; echo \"update from $1\" >> @M@/update", "@TOKEN@", "${steps.backup.outputs.stdout}"] }
[steps.finish]
kind = "process"
needs = ["update", "loop"]
with = { program = "sh", args = ["-c", "echo finish >> @M@/finish", "@TOKEN@"] }
"#;

const SOAK_STEPS: [&str; 5] = ["prepare", "backup", "update", "finish", "loop"];

fn soak_kills() -> usize {
    std::env::var("UPSHIFT_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

struct SoakRun {
    kills: usize,
    sessions: usize,
}

/// One run of the soak plan under random SIGKILLs until it finishes (at
/// most `kills_max` kills, then it is let finish). Asserts everything about
/// the run; returns how often it was killed.
fn soak_one(seed: u64, kills_max: usize) -> SoakRun {
    let sb = Sandbox::new();
    let token = format!("upshift-soak-{}-{seed}", std::process::id());
    let plan = sb.plan("soak.toml", &SOAK_PLAN.replace("@TOKEN@", &token));
    let mut rng = Lcg(seed);
    let mut run_id: Option<String> = None;
    let mut kills = 0;
    let mut sessions = 0;
    loop {
        let args: Vec<&str> = match &run_id {
            None => vec!["run", plan.to_str().unwrap()],
            Some(id) => vec!["resume", id.as_str()],
        };
        let mut cmd = sb.cmd(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        sessions += 1;
        let kill = kills < kills_max;
        let deadline = Duration::from_millis(20 + rng.below(350));
        let start = Instant::now();
        let mut status = None;
        while status.is_none() && (!kill || start.elapsed() < deadline) {
            status = child.try_wait().unwrap();
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("seed {seed}: a session hangs");
            }
        }
        let killed = status.is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        if run_id.is_none() {
            let id = out.lines().next().unwrap_or_default().trim().to_string();
            // `run` prints the id just before it journals run.started: a
            // kill in between leaves no run to resume, so start again.
            if !id.is_empty() && sb.run(&["runs"]).stdout.contains(&id) {
                run_id = Some(id);
            }
        }
        // No step's process outlives the engine (the guard kills the tree).
        assert!(
            wait_until(Duration::from_secs(5), || processes_with(&token).is_empty()),
            "seed {seed}, session {sessions}: left running after the engine died: {:?}",
            processes_with(&token)
        );
        if !killed {
            assert!(
                status.success(),
                "seed {seed}: session {sessions} ended with {status}\n{err}"
            );
            break;
        }
    }
    let run = run_id.expect("the run printed its id");
    assert_eq!(sb.status(&run)["state"], "succeeded", "seed {seed}");
    // Gapless: read_run checks continuity; also check seqs directly.
    let events = sb.events(&run);
    assert!(
        events.iter().enumerate().all(|(i, e)| e.seq == i as u64),
        "seed {seed}: seqs have a gap"
    );
    // No completed step is started again.
    let mut succeeded = BTreeSet::new();
    for e in &events {
        match &e.event {
            Event::StepSucceeded { step, .. } => {
                succeeded.insert(step.clone());
            }
            Event::StepStarted { step, .. } => assert!(
                !succeeded.contains(step),
                "seed {seed}: step {step} started again at seq {} after it succeeded",
                e.seq
            ),
            _ => {}
        }
    }
    for step in SOAK_STEPS {
        assert!(
            succeeded.contains(step),
            "seed {seed}: {step} never succeeded"
        );
    }
    // Effects: each at least once; repeats only for work that was in flight
    // when a kill landed (at most 4 attempts in flight per kill: backup,
    // loop, settle and prepare's successors), and a foreach item repeats at
    // most once per kill.
    let mut extra = 0;
    for step in ["prepare", "backup", "update", "finish"] {
        let n = sb.marker_lines(step).len();
        assert!(n >= 1, "seed {seed}: {step} has no effect");
        extra += n - 1;
    }
    let items = sb.marker_lines("loop");
    let mut per_item: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &items {
        *per_item.entry(l.as_str()).or_default() += 1;
    }
    assert_eq!(per_item.len(), 10, "seed {seed}: items {per_item:?}");
    let item_extra: usize = per_item.values().map(|n| n - 1).sum();
    assert!(
        extra <= kills && item_extra <= kills,
        "seed {seed}: {extra} repeated step effects and {item_extra} repeated items over {kills} kills"
    );
    // The output passed on is the one journaled.
    assert!(
        sb.marker_lines("update")
            .iter()
            .all(|l| l.ends_with("backup.bak")),
        "seed {seed}: {:?}",
        sb.marker_lines("update")
    );
    SoakRun { kills, sessions }
}

/// Runs soak runs (fresh sandboxes, different seeds) until the total number
/// of SIGKILLs reaches `UPSHIFT_SOAK_KILLS`.
#[test]
fn soak_random_sigkills_across_runs_lose_nothing_and_repeat_no_completed_step() {
    let target = soak_kills();
    let start = Instant::now();
    let (mut kills, mut sessions, mut runs) = (0, 0, 0);
    let mut seed = 0x50A4_0000u64;
    while kills < target {
        let r = soak_one(seed, 25.min(target - kills).max(1));
        kills += r.kills;
        sessions += r.sessions;
        runs += 1;
        seed += 1;
    }
    eprintln!(
        "soak: {kills} SIGKILLs, {sessions} engine sessions, {runs} runs, all succeeded, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(kills >= target);
}

// ---------------------------------------------------------------------------
// Damaged journal files through the binary: status and log never panic.

#[test]
fn status_and_log_on_damaged_journal_files_report_never_panic() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "small"
[steps.a]
kind = "process"
with = { program = "echo", args = ["a"] }
[steps.loop]
kind = "foreach"
needs = ["a"]
with = { items = ["1","2","3","4","5","6","7","8"], program = "echo", args = ["${item}"] }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let run = r.run_id();
    let good = std::fs::read(sb.journal().join("journal.redb")).unwrap();
    let run_bytes = run.parse::<upshift_journal::RunId>().unwrap().to_bytes();
    let hot: Vec<usize> = good
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == run_bytes)
        .map(|(i, _)| i)
        .collect();
    assert!(!hot.is_empty());
    let mut rng = Lcg(0xDA4A6E);
    let mut outcomes = BTreeMap::<String, usize>::new();
    for case in 0..12u64 {
        let mut bad = good.clone();
        let what = if case % 3 == 2 {
            let len = rng.below(bad.len() as u64) as usize;
            bad.truncate(len);
            format!("truncated to {len}")
        } else {
            let base = hot[rng.below(hot.len() as u64) as usize];
            let at = (base + rng.below(64) as usize).min(bad.len() - 1);
            bad[at] ^= 1 << rng.below(8);
            format!("flip at {at}")
        };
        std::fs::write(sb.journal().join("journal.redb"), &bad).unwrap();
        for cmd in [
            vec!["status", run.as_str()],
            vec!["log", run.as_str()],
            vec!["runs"],
        ] {
            let r = sb.run(&cmd);
            assert!(
                r.code != Some(101) && !r.stderr.contains("panicked"),
                "{what}: `upshift {}` panicked:\n{}",
                cmd.join(" "),
                r.stderr
            );
            assert!(r.signal.is_none(), "{what}: {cmd:?} died by a signal");
            if r.code != Some(0) {
                assert!(
                    r.stderr.contains("journal") || r.stderr.contains("run"),
                    "{what}: `upshift {}` failed without saying why: {}",
                    cmd.join(" "),
                    r.stderr
                );
            }
            *outcomes
                .entry(format!("{} exit {:?}", cmd[0], r.code))
                .or_default() += 1;
        }
    }
    eprintln!("damaged journals through the binary: {outcomes:?}");
}

// ---------------------------------------------------------------------------
// Disk full.

/// Mounts a 2 MiB tmpfs at `dir`; false (with a message) where that is not
/// permitted.
fn mount_small_tmpfs(dir: &std::path::Path) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        // mode=700: a tmpfs root is 1777 by default, and upshift refuses
        // a journal folder others may write into.
        .args(["-t", "tmpfs", "-o", "size=2m,mode=700", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); disk-full test not run");
    }
    ok
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_journal_disk_stops_the_run_clearly_and_resume_finishes_after_space_is_freed() {
    let sb = Sandbox::new();
    if !mount_small_tmpfs(&sb.journal()) {
        return;
    }
    let _unmount = Unmount(sb.journal());
    let items: Vec<String> = (0..400).map(|i| format!("\"{i}\"")).collect();
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "fill"
[steps.gate]
kind = "process"
with = {{ program = "sh", args = ["-c", "touch @M@/gate-started; while [ ! -e @M@/go ]; do sleep 0.02; done; echo gate >> @M@/gate"] }}
[steps.loop]
kind = "foreach"
needs = ["gate"]
with = {{ items = [{}], program = "sh", args = ["-c", "echo $0 >> @M@/loop", "${{item}}"] }}
"#,
            items.join(", ")
        ),
    );
    let child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || sb
        .markers()
        .join("gate-started")
        .exists()));
    // The journal so far, read beside the live writer.
    let run_id = {
        let j = upshift_journal::Journal::open_read_only(&sb.journal()).unwrap();
        j.runs().unwrap()[0]
    };
    let before = sb.events(&run_id.to_string());
    assert!(before.len() >= 2);
    // Fill the disk with a plain file.
    let fill = sb.journal().join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        let _ = f.sync_all();
    }
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run finished on a full disk?\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("journal disk full"),
        "no clear disk-full error:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing already journaled was lost.
    let after_fail = sb.events(&run_id.to_string());
    assert_eq!(&after_fail[..before.len()], &before[..]);
    // Free the space; resume finishes the run.
    std::fs::remove_file(&fill).unwrap();
    let r = sb.run(&["resume", &run_id.to_string()]);
    r.expect(0);
    assert_eq!(sb.status(&run_id.to_string())["state"], "succeeded");
    let all = sb.events(&run_id.to_string());
    assert_eq!(&all[..after_fail.len()], &after_fail[..]);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let loop_lines = sb.marker_lines("loop");
    for i in 0..400 {
        assert!(loop_lines.contains(&i.to_string()), "item {i} never ran");
    }
}

// ---------------------------------------------------------------------------
// Resource limits.

/// Peak RSS (VmHWM, KiB) of `pid`, polled until it exits.
fn peak_rss_kib(child: &mut std::process::Child) -> u64 {
    let mut peak = 0;
    let status = format!("/proc/{}/status", child.id());
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kib);
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_output_bounded(script: &str, what: &str) {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        &format!(
            "name = \"loud\"\n[steps.loud]\nkind = \"process\"\nwith = {{ program = \"sh\", args = [\"-c\", \"{script}; echo LAST-LINE\"] }}\n"
        ),
    );
    let mut child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peak_kib = peak_rss_kib(&mut child);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{what}: engine peak RSS {} MiB", peak_kib / 1024);
    assert!(peak_kib > 0, "{what}: could not read the engine's RSS");
    assert!(
        peak_kib < 100 * 1024,
        "{what}: engine peak RSS {peak_kib} KiB for a step's output"
    );
    // The journal keeps only a bounded tail, ending with the last line.
    let run = {
        let j = upshift_journal::Journal::open_read_only(&sb.journal()).unwrap();
        j.runs().unwrap()[0]
    };
    let events = sb.events(&run.to_string());
    let tail = events
        .iter()
        .find_map(|e| match &e.event {
            Event::StepSucceeded { output_tail, .. } => Some(output_tail.clone()),
            _ => None,
        })
        .expect("the step succeeded");
    assert!(
        tail.len() <= upshift::engine::OUTPUT_TAIL_BYTES,
        "{what}: tail of {} bytes",
        tail.len()
    );
    assert!(tail.trim_end().ends_with("LAST-LINE"), "{what}");
}

#[test]
fn a_step_printing_a_gibibyte_of_lines_keeps_the_engine_small() {
    assert_output_bounded("yes | head -c 1073741824", "1 GiB of lines");
}

#[test]
fn a_step_printing_256_mib_without_a_newline_keeps_the_engine_small() {
    assert_output_bounded(
        "head -c 268435456 /dev/zero | tr '\\\\0' x",
        "256 MiB in one line",
    );
}

#[test]
fn an_event_too_large_for_the_journal_is_refused_with_a_clear_error() {
    let mut j = upshift_journal::Journal::memory();
    let run = upshift_journal::RunId::new();
    let err = j
        .append(&[upshift_journal::Envelope {
            run,
            seq: 0,
            time: chrono::Utc::now(),
            // Text deflate cannot shrink below the limit (large events are
            // stored deflated): pseudo-random letters, 6 bits each.
            event: Event::Note {
                text: {
                    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                    (0..2 * upshift_journal::codec::EVENT_BYTES_MAX)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            (b'0' + (x % 64) as u8) as char
                        })
                        .collect()
                },
            },
        }])
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds") && err.to_string().contains("limit"),
        "{err}"
    );
    assert!(j.read_run(run).unwrap().is_empty(), "nothing written");
}

#[test]
fn retry_counts_above_the_limit_are_rejected_by_the_plan() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        "name = \"r\"\n[steps.a]\nkind = \"sleep\"\nretry = { attempts = 101 }\nwith = { duration = \"0s\" }\n",
    );
    let r = sb.run(&["check", plan.to_str().unwrap()]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("1..=100"), "{}", r.stderr);
}
