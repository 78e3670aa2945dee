//! Steps on remote hosts through the engine, over real OpenSSH `sshd`
//! processes on loopback (127.0.0.2, .3, .4: the lab of upshift-remote's
//! tests, shared through `#[path]`), with real faults. Where a step ran is
//! told by the environment sshd gives each host's sessions
//! (`UPSHIFT_TEST_HOST`), which only that host's processes have; how often
//! it ran by the lines it appends to marker files. Skipped loudly where
//! sshd is missing.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::Duration;

use upshift_journal::Event;

use crate::support::{Sandbox, bin, wait_until};

#[path = "../../remote/tests/remote/support/sshd.rs"]
pub(crate) mod sshd;

use sshd::Lab;

/// A lab of `n` hosts with the `upshift` binary on all but the last (which
/// gets it through the engine's install over sftp).
pub(crate) fn lab(n: usize) -> Option<Lab> {
    let lab = Lab::start_empty(n)?;
    for i in 0..n.saturating_sub(1) {
        lab.seed(i, Path::new(bin()));
    }
    Some(lab)
}

/// `[hosts.hN]` tables for every host of the lab (quick keepalive).
pub(crate) fn hosts_toml(lab: &Lab) -> String {
    lab.hosts_toml(lab.hosts.len())
}

/// A step that appends `<its host> <word>` to marker `name`.
fn mark(name: &str, word: &str) -> String {
    format!(
        "with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST {word} >> @M@/{name}\"] }}"
    )
}

fn count(sb: &Sandbox, marker: &str, line: &str) -> usize {
    sb.marker_lines(marker)
        .iter()
        .filter(|l| l.as_str() == line)
        .count()
}

fn dispatched(events: &[upshift_journal::Envelope]) -> Vec<(String, u32, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepDispatched {
                step,
                attempt,
                host,
                ..
            } => Some((step.clone(), *attempt, host.clone())),
            _ => None,
        })
        .collect()
}

fn started(events: &[upshift_journal::Envelope], id: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.event, Event::StepStarted { step, .. } if step == id))
        .count()
}

/// Three hosts: each step runs on its host (a fan-out on all three, a
/// chain across them, one step on the coordinator), outputs come back, the
/// binary is installed where it was missing.
#[test]
fn each_step_runs_on_its_host() {
    let Some(lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let plan = sb.plan(
        "hosts.toml",
        &format!(
            "name = \"hosts\"\n\n{}\
             [steps.a]\nkind = \"process\"\nhost = \"h1\"\n{}\n\n\
             [steps.b]\nkind = \"process\"\nhost = \"h2\"\nneeds = [\"a\"]\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST b >> @M@/b; echo from-$UPSHIFT_TEST_HOST\"] }}\n\n\
             [steps.c]\nkind = \"process\"\nhosts = [\"h1\", \"h2\", \"h3\"]\nneeds = [\"b\"]\n{}\n\n\
             [steps.d]\nkind = \"process\"\nneeds = [\"c\"]\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo coordinator$UPSHIFT_TEST_HOST ${{steps.b.outputs.stdout}} >> @M@/d\"] }}\n",
            hosts_toml(&lab),
            mark("a", "a"),
            mark("c", "c"),
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let run = r.run_id();
    // The terminal says where steps go.
    assert!(
        r.stderr.contains("host h3: connected") && r.stderr.contains("b on host h2 (ticket"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.marker_lines("a"), ["h1 a"]);
    assert_eq!(sb.marker_lines("b"), ["h2 b"]);
    let mut c = sb.marker_lines("c");
    c.sort();
    assert_eq!(c, ["h1 c", "h2 c", "h3 c"]);
    // The coordinator's step got b's output from h2.
    assert_eq!(sb.marker_lines("d"), ["coordinator from-h2"]);
    let events = sb.events(&run);
    let mut d = dispatched(&events);
    d.sort();
    assert_eq!(
        d,
        [
            ("a".to_string(), 1, "h1".to_string()),
            ("b".into(), 1, "h2".into()),
            ("c@h1".into(), 1, "h1".into()),
            ("c@h2".into(), 1, "h2".into()),
            ("c@h3".into(), 1, "h3".into()),
        ]
    );
    // The ticket was journaled before the host saw it: in the commit of
    // the step's start (same time), right after it.
    for (i, e) in events.iter().enumerate() {
        if let Event::StepDispatched { step, .. } = &e.event {
            assert!(
                matches!(&events[i - 1].event, Event::StepStarted { step: s, .. } if s == step),
                "{step}: {:?}",
                events[i - 1].event
            );
            assert_eq!(events[i - 1].time, e.time);
        }
    }
    // h3 had no binary: the engine installed it.
    assert!(
        std::fs::read_dir(lab.hosts[2].work_dir.join("bin"))
            .unwrap()
            .count()
            == 1
    );
    // `log` shows where each step ran.
    let log = sb.run(&["log", &run]);
    log.expect(0);
    assert!(
        log.stdout
            .contains("step.dispatched b attempt 1 on host h2"),
        "{}",
        log.stdout
    );
    // The report's timeline has a lane per host: h1's steps, then h2's...
    let html = sb.path().join("report.html");
    sb.run(&["report", &run, "-o", html.to_str().unwrap()])
        .expect(0);
    let html = std::fs::read_to_string(html).unwrap();
    let at = |label: &str| {
        html.find(&format!(">{label}</text>"))
            .unwrap_or_else(|| panic!("no row {label}"))
    };
    assert!(at("d") < at("h1 · a") && at("h1 · a") < at("c@h1"));
    assert!(at("c@h1") < at("h2 · b") && at("h2 · b") < at("c@h3"));
}

/// The sshd of a host is killed in the middle of a long step and started
/// again: the step goes on there, the run finishes, the step ran once.
#[test]
fn a_killed_sshd_does_not_stop_the_step() {
    let Some(mut lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let plan = sb.plan(
        "long.toml",
        &format!(
            "name = \"long\"\n\n{}\
             [steps.long]\nkind = \"process\"\nhost = \"h2\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST start >> @M@/long; sleep 4; echo $UPSHIFT_TEST_HOST end >> @M@/long\"] }}\n\n\
             [steps.after]\nkind = \"process\"\nhost = \"h3\"\nneeds = [\"long\"]\n{}\n",
            hosts_toml(&lab),
            mark("after", "after"),
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || count(
        &sb, "long", "h2 start"
    ) == 1));
    lab.kill_sshd(1);
    std::thread::sleep(Duration::from_millis(1500));
    lab.start_sshd(1).expect("sshd restarts");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(sb.marker_lines("long"), ["h2 start", "h2 end"]);
    assert_eq!(sb.marker_lines("after"), ["h3 after"]);
    let events = sb.events(&run);
    assert_eq!(started(&events, "long"), 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Event::Note { text } if text.contains("connection lost"))),
        "no note of the lost connection"
    );
}

/// The coordinator is SIGKILLed while steps run on two hosts; `upshift
/// resume` follows their tickets again: nothing starts twice, the run
/// finishes.
#[test]
fn resume_reattaches_after_a_coordinator_crash() {
    let Some(lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let step = |id: &str, host: &str| {
        format!(
            "[steps.{id}]\nkind = \"process\"\nhost = \"{host}\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST start >> @M@/{id}; sleep 3; echo $UPSHIFT_TEST_HOST end >> @M@/{id}\"] }}\n\n"
        )
    };
    let plan = sb.plan(
        "crash.toml",
        &format!(
            "name = \"crash\"\n\n{}{}{}",
            hosts_toml(&lab),
            step("x", "h1"),
            step("y", "h2"),
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || {
        count(&sb, "x", "h1 start") == 1 && count(&sb, "y", "h2 start") == 1
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    let r = sb.run(&["resume", &run]);
    r.expect(0);
    assert_eq!(sb.marker_lines("x"), ["h1 start", "h1 end"]);
    assert_eq!(sb.marker_lines("y"), ["h2 start", "h2 end"]);
    let events = sb.events(&run);
    assert_eq!(started(&events, "x"), 1);
    assert_eq!(started(&events, "y"), 1);
    // Dispatched once by the first session, re-attached once by the resume.
    let d = dispatched(&events);
    assert_eq!(d.iter().filter(|(s, ..)| s == "x").count(), 2, "{d:?}");
    // The status shows where each step ran.
    let st = sb.status(&run);
    assert_eq!(st["steps"]["x"]["host"], "h1", "{st}");
    assert_eq!(
        st["steps"]["x"]["ticket"],
        format!("{run}-x-1").as_str(),
        "{st}"
    );
    let text = sb.run(&["status", &run]);
    assert!(text.stdout.contains("succeeded   on h1"), "{}", text.stdout);
}

/// A remote `foreach` of 200 items whose runner is SIGKILLed on the host
/// after ~80 items: the engine starts the step again from its last
/// checkpoint under a new ticket; every item ran, only those in flight
/// twice.
#[test]
fn a_killed_runner_resumes_from_its_checkpoint() {
    let Some(lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let items: Vec<String> = (1..=200).map(|i| format!("\"{i}\"")).collect();
    let plan = sb.plan(
        "each.toml",
        &format!(
            "name = \"each\"\n\n{}\
             [steps.each]\nkind = \"foreach\"\nhost = \"h1\"\n\
             with = {{ items = [{}], concurrency = 4, program = \"sh\", args = [\"-c\", \"echo ${{item}} >> @M@/items; sleep 0.05\"] }}\n",
            hosts_toml(&lab),
            items.join(", "),
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(120), || sb
        .marker_lines("items")
        .len()
        >= 80));
    let ticket = lab.ticket_dir(0, &format!("{run}-each-1"));
    let runner: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ticket.join("runner.json")).unwrap())
            .unwrap();
    sshd::kill9(runner["pid"].as_u64().unwrap() as u32);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let lines = sb.marker_lines("items");
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for l in &lines {
        *seen.entry(l.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 200, "every item ran");
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 4,
        "{twice} items ran twice (at most the 4 in flight)"
    );
    assert!(seen.values().all(|n| *n <= 2));
    let events = sb.events(&run);
    assert_eq!(started(&events, "each"), 2);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::StepStarted { step, attempt: 2, resumed_from_checkpoint: true } if step == "each"
    )));
    eprintln!("killed runner: {} lines, {twice} items twice", lines.len());
}

/// A host whose key changed: nothing runs anywhere, the run pauses with
/// an error naming the host; a login refused (wrong key) likewise.
#[test]
fn host_key_changed_or_login_refused_runs_nothing() {
    let Some(mut lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let text = |hosts: String| {
        format!(
            "name = \"refused\"\n\n{hosts}\
             [steps.one]\nkind = \"process\"\nhost = \"h1\"\n{}\n\n\
             [steps.two]\nkind = \"process\"\nhost = \"h2\"\n{}\n",
            mark("one", "one"),
            mark("two", "two"),
        )
    };
    lab.change_host_key(1);
    let plan = sb.plan("changed.toml", &text(hosts_toml(&lab)));
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    assert!(
        r.stderr.contains("h2") && r.stderr.contains("nothing was started"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.to_lowercase().contains("host key"), "{}", r.stderr);
    assert!(sb.marker_lines("one").is_empty() && sb.marker_lines("two").is_empty());
    assert!(!lab.hosts[1].work_dir.join("tickets").exists());

    // A key the hosts do not accept, for h1 only.
    let mut lab2 = Lab::start_empty(2).unwrap();
    let hosts = hosts_toml(&lab2).replacen(
        &lab2.user_key.display().to_string(),
        &lab2.wrong_key.display().to_string(),
        1,
    );
    let sb2 = Sandbox::new();
    let plan = sb2.plan("wrong.toml", &text(hosts));
    let r = sb2.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    assert!(r.stderr.contains("h1"), "{}", r.stderr);
    assert!(sb2.marker_lines("one").is_empty() && sb2.marker_lines("two").is_empty());
    lab2.kill_sshd(0);
}

/// The live engine's state after a run on two ssh hosts (a checkpointing
/// remote `foreach`, a remote step, a local one) is the fold of its
/// journal, field by field (`StepDispatched` and the remote checkpoint
/// count included).
#[test]
fn the_live_state_is_the_fold_of_the_journal_with_remote_steps() {
    use upshift::plan::{LoadOptions, parse};

    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let text = format!(
        "name = \"live\"\n\n{}\
         [steps.each]\nkind = \"foreach\"\nhost = \"h1\"\n\
         with = {{ items = [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\"], concurrency = 2, program = \"sh\", args = [\"-c\", \"echo ${{item}}\"] }}\n\n\
         [steps.two]\nkind = \"process\"\nhost = \"h2\"\n\
         with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST\"] }}\n\n\
         [steps.end]\nkind = \"process\"\nneeds = [\"each\", \"two\"]\n\
         with = {{ program = \"sh\", args = [\"-c\", \"echo ${{steps.two.outputs.stdout}}\"] }}\n",
        hosts_toml(&lab)
    );
    let registry = upshift_steps::registry();
    let plan = parse(
        &sb.path().join("live.toml"),
        &text,
        &registry,
        &LoadOptions::default(),
    )
    .unwrap();
    // What goes on the hosts: the upshift binary (it has `__remote`).
    let (live, _events) = upshift::engine::run_to_end_live_equals_replay(
        &plan,
        &sb.journal(),
        sb.path().join("work"),
        Some(bin().into()),
    );
    assert_eq!(live.step("two").outputs["stdout"], "h2");
    assert_eq!(live.step("end").outputs["stdout"], "h2");
    let each = live.step("each").remote.clone().expect("dispatched");
    assert_eq!((each.host.as_str(), each.checkpoints), ("h1", 6));
}

/// A simulated reboot of the host in the middle of a remote `foreach`
/// (every process of that host killed, sshd started again, a new boot id):
/// the ticket reads interrupted, the step starts again from its last
/// checkpoint under a new ticket; a step on another host is not disturbed.
#[test]
fn a_rebooted_host_resumes_the_step_from_its_checkpoint() {
    let Some(mut lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let items: Vec<String> = (1..=60).map(|i| format!("\"{i}\"")).collect();
    let plan = sb.plan(
        "reboot.toml",
        &format!(
            "name = \"reboot\"\n\n{}\
             [steps.each]\nkind = \"foreach\"\nhost = \"h1\"\n\
             with = {{ items = [{}], concurrency = 2, program = \"sh\", args = [\"-c\", \"echo ${{item}} >> @M@/items; sleep 0.1\"] }}\n\n\
             [steps.other]\nkind = \"process\"\nhost = \"h2\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST start >> @M@/other; sleep 4; echo $UPSHIFT_TEST_HOST end >> @M@/other\"] }}\n",
            hosts_toml(&lab),
            items.join(", "),
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(120), || sb
        .marker_lines("items")
        .len()
        >= 20));
    lab.simulate_reboot(0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for l in sb.marker_lines("items") {
        *seen.entry(l.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 60, "every item ran");
    assert!(seen.values().filter(|n| **n > 1).count() <= 2);
    assert_eq!(sb.marker_lines("other"), ["h2 start", "h2 end"]);
    let events = sb.events(&run);
    assert_eq!(started(&events, "each"), 2);
    assert_eq!(started(&events, "other"), 1);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::Note { text } if text.contains("each") && text.contains("interrupted")
    )));
}

/// A remote step that needs a reboot (exit 100, its reboot code; 3010 on Windows) with `reboot = "auto"`:
/// upshift reboots that host (its reboot command), waits until the host
/// answers with a new boot id, then goes on with the host's next step; a
/// step on another host is not held up, and the coordinator is not rebooted.
#[test]
fn a_step_that_needs_a_reboot_reboots_its_host() {
    let Some(mut lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let plan = sb.plan(
        "reboot.toml",
        &format!(
            "name = \"reboot\"\nreboot = \"auto\"\n\n{}\
             [steps.inst]\nkind = \"process\"\nhost = \"h1\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST inst >> @M@/inst; exit 100\"], reboot_exit_codes = [100] }}\n\n\
             [steps.after]\nkind = \"process\"\nhost = \"h1\"\nneeds = [\"inst\"]\n{}\n\n\
             [steps.other]\nkind = \"process\"\nhost = \"h2\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"sleep 1; echo $UPSHIFT_TEST_HOST other >> @M@/other\"] }}\n",
            hosts_toml(&lab),
            mark("after", "after"),
        ),
    );
    let err = std::fs::File::create(sb.path().join("stderr")).unwrap();
    let mut child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let run = line.trim().to_string();
    let log = lab.hosts[0].reboot_log.clone();
    assert!(
        wait_until(Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|s| !s.is_empty())
        }),
        "no reboot: {}\n{}",
        sb.run(&["log", &run]).stdout,
        std::fs::read_to_string(sb.path().join("stderr")).unwrap()
    );
    // Meanwhile the other host's step went on.
    assert!(wait_until(Duration::from_secs(30), || sb
        .marker_lines("other")
        .len()
        == 1));
    // The host goes down and comes back with a new boot id.
    std::thread::sleep(Duration::from_millis(500));
    lab.simulate_reboot(0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    assert_eq!(sb.marker_lines("inst"), ["h1 inst"]);
    assert_eq!(sb.marker_lines("after"), ["h1 after"]);
    assert_eq!(sb.marker_lines("other"), ["h2 other"]);
    let events = sb.events(&run);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::Note { text } if text.contains("host h1 rebooted: boot id boot-h1-1 -> boot-h1-2")
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, Event::RebootRequested { .. }))
    );
}

/// Drift of a remote step is probed on its host (an `op = probe` ticket
/// there): `upshift drift` reports a value changed back by hand, and
/// `resume` pauses on it.
#[test]
fn drift_of_a_remote_step_is_probed_on_its_host() {
    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let config = lab.hosts[0].dir.join("AppSettings.config");
    std::fs::write(
        &config,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"old\" />\n</appSettings>\n",
    )
    .unwrap();
    let plan = sb.plan(
        "drift.toml",
        &format!(
            "name = \"drift\"\n\n{}\
             [steps.edit]\nkind = \"config.appsettings\"\nhost = \"h1\"\n\
             with = {{ file = \"{}\", set = {{ InstanzName = \"TM\" }} }}\n\n\
             [steps.gate]\nkind = \"manual\"\nneeds = [\"edit\"]\n\
             with = {{ instructions = \"check the site\" }}\n",
            hosts_toml(&lab),
            config.display()
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("value=\"TM\"")
    );
    let probes = || {
        std::fs::read_dir(lab.hosts[0].work_dir.join("tickets"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{run}-edit-p"))
            })
            .count()
    };
    sb.run(&["drift", &run]).expect(0);
    assert_eq!(probes(), 1, "the probe ran on h1");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("value=\"TM\"", "value=\"old\"");
    std::fs::write(&config, text).unwrap();
    let d = sb.run(&["drift", &run]);
    d.expect(1);
    assert!(
        d.stdout.contains("edit:") && d.stdout.contains("InstanzName"),
        "{}",
        d.stdout
    );
    assert_eq!(probes(), 2);
    sb.run(&["approve", &run, "gate"]).expect(0);
    let paused = sb.run(&["resume", &run]);
    paused.expect(3);
    assert!(
        paused.stderr.contains("--ignore-drift"),
        "{}",
        paused.stderr
    );
}

/// The coordinator SIGKILLed in the middle of a remote 200-item `foreach`,
/// then `upshift resume`: the runner went on meanwhile on the host, the
/// resume follows the same ticket, and no item runs twice.
#[test]
fn a_remote_foreach_survives_a_coordinator_crash_without_repeats() {
    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let items: Vec<String> = (1..=200).map(|i| format!("\"{i}\"")).collect();
    let plan = sb.plan(
        "each.toml",
        &format!(
            "name = \"each\"\n\n{}\
             [steps.each]\nkind = \"foreach\"\nhost = \"h1\"\n\
             with = {{ items = [{}], concurrency = 4, program = \"sh\", args = [\"-c\", \"echo ${{item}} >> @M@/items; sleep 0.05\"] }}\n",
            hosts_toml(&lab),
            items.join(", "),
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(120), || sb
        .marker_lines("items")
        .len()
        >= 60));
    child.kill().unwrap();
    child.wait().unwrap();
    sb.run(&["resume", &run]).expect(0);
    let lines = sb.marker_lines("items");
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for l in &lines {
        *seen.entry(l.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 200, "every item ran");
    assert!(seen.values().all(|n| *n == 1), "an item ran twice");
    let events = sb.events(&run);
    assert_eq!(started(&events, "each"), 1);
    // Every checkpoint journaled once: 200 in all.
    let checkpoints = events
        .iter()
        .filter(|e| matches!(&e.event, Event::StepCheckpoint { step, .. } if step == "each"))
        .count();
    assert_eq!(checkpoints, 200);
}

/// The TeamManager plan on a three-host site over real sshd: the demo lays
/// out the simulated site (stand-ins for msiexec, SQL Server, IIS...), its
/// hosts tm01, web01 and lync01 become three ssh hosts of the lab, and the
/// plan runs to its end on them, the operator's part played by the test
/// (the Database Updater's stand-in, approvals, the reboot of the host
/// whose installer asked for one). SMD's install is observed on the Lync
/// host, and only there.
#[cfg(feature = "demo")]
#[test]
fn the_tm_plan_runs_on_a_three_host_site_over_ssh() {
    use crate::support::StopStandins;
    let Some(mut lab) = lab(3) else { return };
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    // The demo builds the site and its stand-ins; its own run stops at the
    // first gate, before anything is installed.
    let r = sb.run(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--stop-at",
        "db_updater",
    ]);
    r.expect(3);
    let demo_events = {
        let j = upshift_journal::Journal::open_read_only(&dir.join("journal")).unwrap();
        j.read_run(r.run_id().parse().unwrap()).unwrap()
    };
    let vars = demo_events
        .iter()
        .find_map(|e| match &e.event {
            Event::RunStarted { vars, .. } => Some(vars.clone()),
            _ => None,
        })
        .unwrap();
    // The site's stand-in hosts become the lab's ssh hosts.
    let site = dir.join("plan/sites/demo.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    let names = ["tm01", "web01", "lync01"];
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("[hosts.")
            .and_then(|l| l.strip_suffix(']'))
        {
            let i = names.iter().position(|n| *n == name).expect("a demo host");
            let h = &lab.hosts[i];
            out.push_str(&format!(
                "[hosts.{name}]\ntransport = \"ssh\"\naddress = \"{}\"\nport = {}\nuser = \"{}\"\n\
                 identity_file = \"{}\"\nknown_hosts_file = \"{}\"\nwork_dir = \"{}\"\n\
                 connect_timeout = \"5s\"\nkeepalive_interval = \"1s\"\nkeepalive_count_max = 2\n",
                h.addr,
                h.port,
                lab.user,
                lab.user_key.display(),
                lab.known_hosts.display(),
                h.work_dir.display()
            ));
            skip = true;
            continue;
        }
        if skip && (line.starts_with("transport") || line.starts_with("work_dir")) {
            continue;
        }
        skip = false;
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(&site, out).unwrap();
    // Who runs msiexec: the stand-in wrapped once more.
    let bin = dir.join("bin");
    std::fs::rename(bin.join("msiexec"), bin.join("msiexec-demo")).unwrap();
    let who = dir.join("msiexec-hosts.log");
    std::fs::write(
        bin.join("msiexec"),
        format!(
            "#!/bin/sh\necho \"${{UPSHIFT_TEST_HOST:-coordinator}} $*\" >> '{}'\nexec '{}' \"$@\"\n",
            who.display(),
            bin.join("msiexec-demo").display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(bin.join("msiexec"))
        .status()
        .unwrap();
    let plan = dir.join("plan/teammanager.toml");
    let mut args: Vec<String> = vec![
        "run".into(),
        plan.display().to_string(),
        "--site".into(),
        site.display().to_string(),
    ];
    for (k, v) in &vars {
        match k.strip_prefix("secret:") {
            Some(name) => args.extend(["--secret".into(), format!("{name}={v}")]),
            None => args.extend(["--var".into(), format!("{k}={v}")]),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = sb.run(&args);
    let run = r.run_id();
    let mut rounds = 0;
    while r.code == Some(3) {
        rounds += 1;
        assert!(rounds < 12, "too many pauses: {}", r.stderr);
        let status = sb.status(&run);
        let paused = status["paused"].as_str().unwrap_or_default().to_string();
        if let Some(at) = paused.find("requires a reboot of host ") {
            let host = paused[at + "requires a reboot of host ".len()..]
                .split(':')
                .next()
                .unwrap()
                .to_string();
            let i = names.iter().position(|n| *n == host).unwrap();
            lab.simulate_reboot(i);
        }
        for (id, s) in status["steps"].as_object().unwrap() {
            if s["state"] != "waiting" {
                continue;
            }
            if id == "db_updater" {
                let u = std::process::Command::new(bin.join("DataBaseUpdater-standin"))
                    .output()
                    .unwrap();
                assert!(u.status.success(), "{u:?}");
            }
            sb.run(&["approve", &run, id]).expect(0);
        }
        r = sb.run(&["resume", &run]);
    }
    r.expect(0);
    let status = sb.status(&run);
    assert_eq!(status["state"], "succeeded", "{status}");
    // SMD was installed on the Lync host, and only there.
    let lines = std::fs::read_to_string(&who).unwrap();
    let smd: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("TM-SMD") && l.contains("/i"))
        .collect();
    assert!(!smd.is_empty(), "{lines}");
    assert!(smd.iter().all(|l| l.starts_with("h3 ")), "{lines}");
    // FE on the IIS host, the application server's components on tm01.
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("h2 ") && l.contains("TM-FE")),
        "{lines}"
    );
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains("TM-ICH")),
        "{lines}"
    );
    assert!(
        !lines.lines().any(|l| l.starts_with("coordinator ")),
        "{lines}"
    );
    let events = sb.events(&run);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::StepDispatched { step, host, .. } if step.starts_with("smd_install") && host == "lync01"
    )));
    // The ICH installer asked for a reboot (reboot = "ask"): the run paused
    // naming the host, which the test rebooted; the coordinator was not.
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::RebootRequested { step, action } if step == "ich_install@tm01" && action.contains("reboot host tm01")
    )));
    assert_eq!(
        std::fs::read_to_string(&lab.hosts[0].boot_id_file)
            .unwrap()
            .trim(),
        "boot-h1-2"
    );
    eprintln!("TM plan over ssh: {rounds} pauses played");
}

/// A secret used by a remote step reaches the host only over the SSH
/// channel: no file of the host's ticket or step folders, no byte of the
/// journal, no line the coordinator printed holds it; the output comes
/// back redacted.
#[test]
fn a_secret_of_a_remote_step_stays_off_disks_and_terminals() {
    const SECRET: &str = "Rem0te-Sup3r-S3cret";
    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let plan = sb.plan(
        "secret.toml",
        &format!(
            "name = \"secret\"\n\n{}\
             [secrets]\npw = {{ env = \"UPSHIFT_TEST_PW\" }}\n\n\
             [steps.uses]\nkind = \"process\"\nhost = \"h1\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"echo password is $PW; echo $PW >&2; echo $UPSHIFT_TEST_HOST >> @M@/uses\"], env = {{ PW = \"${{secrets.pw}}\" }} }}\n",
            hosts_toml(&lab),
        ),
    );
    let r = sb.run_env(
        &["run", plan.to_str().unwrap(), "--show-output"],
        &[("UPSHIFT_TEST_PW", SECRET)],
    );
    r.expect(0);
    assert_eq!(sb.marker_lines("uses"), ["h1"]);
    let run = r.run_id();
    let log = sb.run(&["log", &run]);
    assert!(
        log.stdout.contains("password is ***"),
        "the step saw the value, redacted: {}",
        log.stdout
    );
    let host = &lab.hosts[0].work_dir;
    for (what, bytes) in [
        (
            "journal folder",
            crate::support::all_bytes_under(&sb.journal()),
        ),
        (
            "host tickets",
            crate::support::all_bytes_under(&host.join("tickets")),
        ),
        (
            "host step folders",
            crate::support::all_bytes_under(&host.join("steps")),
        ),
        ("run stderr", r.stderr.clone().into_bytes()),
        ("log", log.stdout.clone().into_bytes()),
    ] {
        assert!(
            !bytes.is_empty() || what == "host step folders",
            "{what} is empty"
        );
        assert!(
            !crate::support::contains(&bytes, SECRET),
            "the secret is in the {what}"
        );
    }
}

/// A remote step's `timeout` kills its process tree on the host; an
/// operator's abort of a live run kills the remote steps in flight; SIGTERM
/// to the coordinator leaves them running, and `resume` follows them.
#[test]
fn timeouts_and_aborts_kill_remote_trees_and_sigterm_leaves_them_running() {
    let Some(lab) = lab(2) else { return };
    let long = |id: &str, host: &str, extra: &str| {
        format!(
            "[steps.{id}]\nkind = \"process\"\nhost = \"{host}\"\n{extra}\
             with = {{ program = \"sh\", args = [\"-c\", \"echo $UPSHIFT_TEST_HOST start >> @M@/{id}; sleep 4; echo $UPSHIFT_TEST_HOST end >> @M@/{id}\"] }}\n\n"
        )
    };
    // Timeout: the step fails (transient), its `sleep` was killed on h1.
    let sb = Sandbox::new();
    let plan = sb.plan(
        "timeout.toml",
        &format!(
            "name = \"timeout\"\n\n{}{}",
            hosts_toml(&lab),
            long("slow", "h1", "timeout = \"1s\"\n")
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    assert!(
        r.stderr.contains("timed out after 1.0 s on host h1"),
        "{}",
        r.stderr
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sb.marker_lines("slow"), ["h1 start"]);

    // Abort of a live run: the remote step is killed there.
    let sb = Sandbox::new();
    let plan = sb.plan(
        "abort.toml",
        &format!(
            "name = \"abort\"\n\n{}{}",
            hosts_toml(&lab),
            long("x", "h2", "")
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || count(
        &sb, "x", "h2 start"
    ) == 1));
    sb.run(&["abort", &run, "--reason", "test"]).expect(0);
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sb.marker_lines("x"), ["h2 start"], "killed before its end");
    let end =
        std::fs::read_to_string(lab.ticket_dir(1, &format!("{run}-x-1")).join("end.json")).unwrap();
    assert!(end.contains("aborted"), "{end}");

    // SIGTERM: the coordinator stops, the step goes on on h1; resume
    // follows it to its end.
    let sb = Sandbox::new();
    let plan = sb.plan(
        "term.toml",
        &format!(
            "name = \"term\"\n\n{}{}",
            hosts_toml(&lab),
            long("y", "h1", "")
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || count(
        &sb, "y", "h1 start"
    ) == 1));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap();
    let events = sb.events(&run);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::RunInterrupted { reason } if reason.contains("still running on their hosts: y on h1")
    )), "{:?}", events.last());
    sb.run(&["resume", &run]).expect(0);
    assert_eq!(sb.marker_lines("y"), ["h1 start", "h1 end"]);
    assert_eq!(started(&sb.events(&run), "y"), 1);

    // SIGTERM, then an abort while no engine holds the run: the step left
    // running on h2 is stopped there.
    let sb = Sandbox::new();
    let plan = sb.plan(
        "term2.toml",
        &format!(
            "name = \"term2\"\n\n{}{}",
            hosts_toml(&lab),
            long("z", "h2", "")
        ),
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || count(
        &sb, "z", "h2 start"
    ) == 1));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap();
    let a = sb.run(&["abort", &run, "--reason", "test"]);
    assert!(a.stderr.contains("stopped on host h2"), "{}", a.stderr);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sb.marker_lines("z"), ["h2 start"], "killed before its end");
    let end =
        std::fs::read_to_string(lab.ticket_dir(1, &format!("{run}-z-1")).join("end.json")).unwrap();
    assert!(end.contains("aborted"), "{end}");
}

/// A plan whose step `b` on h2 fails and rolls back step `a` on h1, whose
/// compensation runs the shell command `undo` there.
fn rollback_plan(sb: &Sandbox, lab: &Lab, undo: &str) -> std::path::PathBuf {
    sb.plan(
        "rollback.toml",
        &format!(
            "name = \"rollback\"\n\n{}\
             [steps.a]\nkind = \"process\"\nhost = \"h1\"\n{}\n\
             compensate = {{ kind = \"process\", with = {{ program = \"sh\", args = [\"-c\", \"{undo}\"] }} }}\n\n\
             [steps.b]\nkind = \"process\"\nhost = \"h2\"\nneeds = [\"a\"]\non_failure = \"rollback\"\n\
             with = {{ program = \"sh\", args = [\"-c\", \"exit 7\"] }}\n",
            hosts_toml(lab),
            mark("a", "a"),
        ),
    )
}

/// A rollback compensates a remote step on its host.
#[test]
fn a_rollback_compensates_a_remote_step_on_its_host() {
    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let plan = rollback_plan(&sb, &lab, "echo $UPSHIFT_TEST_HOST undo >> @M@/a.undo");
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(1);
    assert_eq!(sb.marker_lines("a"), ["h1 a"]);
    assert_eq!(sb.marker_lines("a.undo"), ["h1 undo"]);
    let status = sb.status(&r.run_id());
    assert_eq!(status["state"], "rolled_back", "{status}");
}

/// The coordinator is SIGKILLed while a remote step's compensation runs on
/// its host: `resume` names the same compensation ticket, the host answers
/// that it exists, and the engine follows it to its end: the compensation
/// ran once, and the run is rolled back.
#[test]
fn a_compensation_in_flight_at_a_crash_is_followed_not_run_again() {
    let Some(lab) = lab(2) else { return };
    let sb = Sandbox::new();
    let plan = rollback_plan(
        &sb,
        &lab,
        "echo $UPSHIFT_TEST_HOST start >> @M@/a.undo; sleep 3; echo $UPSHIFT_TEST_HOST end >> @M@/a.undo",
    );
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(wait_until(Duration::from_secs(60), || count(
        &sb, "a.undo", "h1 start"
    ) == 1));
    child.kill().unwrap();
    child.wait().unwrap();
    let r = sb.run(&["resume", &run]);
    r.expect(1);
    assert_eq!(sb.marker_lines("a.undo"), ["h1 start", "h1 end"]);
    let status = sb.status(&run);
    assert_eq!(status["state"], "rolled_back", "{status}");
    let events = sb.events(&run);
    let started = events
        .iter()
        .filter(|e| matches!(&e.event, Event::CompensationStarted { step } if step == "a"))
        .count();
    // Started by the first session, again (and followed) by the resume.
    assert_eq!(started, 2);
    let notes: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Note { text } if text.starts_with("compensation of a dispatched") => {
                Some(text.clone())
            }
            _ => None,
        })
        .collect();
    let ticket = format!("{run}-a-c1.1");
    assert!(
        notes.len() == 2 && notes.iter().all(|n| n.contains(&ticket)),
        "{notes:?}"
    );
}
