//! Real faults over real sshd, each checked by counting side effects in
//! files: sshd killed mid-step, the coordinator SIGKILLed mid-step, the
//! runner killed (and a 200-item foreach resumed from its checkpoint), a
//! simulated reboot of one host.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_remote::client::{NoRedaction, Started, TicketEvent};
use upshift_remote::protocol::{EndState, TicketId};
use upshift_remote::sys::ProcessIdentity;

use crate::support::sshd::{Lab, kill9};
use crate::support::{follow, follow_to_end, lines, request, sh, stub, wait_until};

/// A step that records its start, then prints `line 1` .. `line n`, one
/// every `gap` seconds.
fn counting_step(
    ticket: &str,
    runs: &std::path::Path,
    n: u32,
    gap: &str,
) -> upshift_remote::protocol::StartRequest {
    sh(
        ticket,
        &format!(
            "echo started >> '{}'; i=1; while [ $i -le {n} ]; do echo line $i; i=$((i+1)); sleep {gap}; done",
            runs.display()
        ),
    )
}

fn expected_lines(n: u32) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[tokio::test]
async fn sshd_killed_mid_step_the_step_survives_runs_once_and_no_output_is_lost() {
    let Some(mut lab) = Lab::start(1) else {
        return;
    };
    let runs = lab.hosts[0].dir.join("runs");
    let host = lab.remote(0);
    host.start(&counting_step("long", &runs, 30, "0.1"))
        .await
        .unwrap();
    // Follow until some output arrived, then kill the host's sshd.
    let mut got = follow(&host, "long", Arc::new(NoRedaction), |g| {
        g.output.contains("line 3")
    })
    .await;
    lab.kill_sshd(0);
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(lines(&runs).len(), 1, "the step keeps running without sshd");
    lab.start_sshd(0).unwrap();
    let rest = follow(&host, "long", Arc::new(NoRedaction), |_| false).await;
    // `follow` restarts from cursor 0: the whole output again, complete.
    assert_eq!(
        rest.output,
        expected_lines(30),
        "output complete, in order, once"
    );
    assert!(
        matches!(rest.end(), Some(EndState::Succeeded { .. })),
        "{rest:?}"
    );
    got.events.extend(rest.events);
    assert_eq!(lines(&runs), vec!["started"], "the step ran exactly once");
    eprintln!("sshd was down {:?}", down.elapsed());
}

#[tokio::test]
async fn a_follower_reconnects_by_itself_and_reports_the_outage() {
    let Some(lab) = Lab::start(1) else {
        return;
    };
    let runs = lab.hosts[0].dir.join("runs");
    let host = lab.remote(0);
    host.start(&counting_step("r1", &runs, 20, "0.1"))
        .await
        .unwrap();
    let mut f = host.follow(
        TicketId::new("r1").unwrap(),
        Default::default(),
        Arc::new(NoRedaction),
    );
    let mut output = String::new();
    let (mut lost, mut back) = (0, 0);
    let mut lab = Some(lab);
    let mut restart = None;
    while let Some(ev) = f.next().await.unwrap() {
        match ev {
            TicketEvent::Output(t) => {
                output.push_str(&t);
                if let Some(mut l) = lab.take_if(|_| output.contains("line 2")) {
                    // sshd goes down for 0.8 s while the follower goes on.
                    l.kill_sshd(0);
                    restart = Some(tokio::task::spawn_blocking(move || {
                        std::thread::sleep(Duration::from_millis(800));
                        l.start_sshd(0).unwrap();
                        l
                    }));
                }
            }
            TicketEvent::ConnectionLost { .. } => lost += 1,
            TicketEvent::Reconnected { .. } => back += 1,
            _ => {}
        }
    }
    let _lab = restart.expect("sshd was killed").await.unwrap();
    assert_eq!(
        output,
        expected_lines(20),
        "no output lost or repeated across the outage"
    );
    assert!(
        lost >= 1 && back >= 1,
        "the outage was reported: lost {lost}, back {back}"
    );
    assert_eq!(lines(&runs).len(), 1);
}

#[tokio::test]
async fn a_silent_network_is_noticed_by_keepalive_and_the_step_goes_on() {
    let Some(mut lab) = Lab::start(1) else {
        return;
    };
    let runs = lab.hosts[0].dir.join("runs");
    let host = lab.remote(0); // keepalive: 1 s x 2
    host.start(&counting_step("quiet", &runs, 60, "0.1"))
        .await
        .unwrap();
    let mut f = host.follow(
        TicketId::new("quiet").unwrap(),
        Default::default(),
        Arc::new(NoRedaction),
    );
    let mut output = String::new();
    let mut frozen_at = None;
    let mut noticed_after = None;
    while let Some(ev) = f.next().await.unwrap() {
        match ev {
            TicketEvent::Output(t) => {
                output.push_str(&t);
                if frozen_at.is_none() && output.contains("line 2") {
                    lab.freeze_sshd(0, true);
                    frozen_at = Some(Instant::now());
                }
            }
            TicketEvent::ConnectionLost { .. } if noticed_after.is_none() => {
                noticed_after = frozen_at.map(|t| t.elapsed());
                lab.freeze_sshd(0, false);
            }
            _ => {}
        }
    }
    let noticed = noticed_after.expect("the silent connection was noticed");
    eprintln!("a silent connection was noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(10),
        "keepalive (1 s x 2) should notice within seconds, took {noticed:?}"
    );
    assert_eq!(output, expected_lines(60), "no output lost or repeated");
    assert_eq!(lines(&runs).len(), 1);
}

#[tokio::test]
async fn coordinator_killed_mid_step_a_new_coordinator_attaches_without_a_second_start() {
    let Some(lab) = Lab::start(1) else {
        return;
    };
    let runs = lab.hosts[0].dir.join("runs");
    let req = counting_step("c1", &runs, 25, "0.1");
    let h = &lab.hosts[0];
    let job = serde_json::json!({
        "name": h.name, "address": h.addr, "port": h.port, "user": lab.user,
        "identity_file": lab.user_key, "known_hosts_file": lab.known_hosts,
        "work_dir": h.work_dir, "binary": stub(), "request": req,
    });
    // A coordinator in its own process, SIGKILLed once it has seen output.
    let mut coord = Command::new(stub())
        .arg("__test-coordinator")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    coord
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(coord.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("line 3") {
            break;
        }
    }
    assert!(seen[0].starts_with("started New"), "{seen:?}");
    kill9(coord.id());
    let _ = coord.wait();

    // A fresh coordinator: the same ticket attaches, nothing starts again.
    let host = lab.remote(0);
    assert_eq!(host.start(&req).await.unwrap(), Started::Existing);
    let got = follow_to_end(&host, "c1").await;
    assert_eq!(got.output, expected_lines(25));
    assert!(matches!(got.end(), Some(EndState::Succeeded { .. })));
    assert_eq!(lines(&runs), vec!["started"], "one start in all");
}

fn foreach_request(
    ticket: &str,
    items_log: &std::path::Path,
    items: usize,
) -> upshift_remote::protocol::StartRequest {
    let mut with = toml::Table::new();
    with.insert(
        "items".into(),
        toml::Value::Array(
            (0..items)
                .map(|i| toml::Value::from(format!("item{i:03}")))
                .collect(),
        ),
    );
    with.insert("concurrency".into(), 4.into());
    with.insert("program".into(), "sh".into());
    with.insert(
        "args".into(),
        toml::Value::Array(vec![
            "-c".into(),
            format!("echo ${{item}} >> '{}'; sleep 0.02", items_log.display()).into(),
        ]),
    );
    let mut req = request(ticket, "foreach", with);
    req.step_id = "conferences".into();
    req
}

#[tokio::test]
async fn a_killed_runner_reads_interrupted_and_a_200_item_foreach_resumes_repeating_only_items_in_flight()
 {
    let Some(lab) = Lab::start(1) else {
        return;
    };
    let items_log = lab.hosts[0].dir.join("items");
    let host = lab.remote(0);
    let first = foreach_request("fe-1", &items_log, 200);
    host.start(&first).await.unwrap();
    // Let about 80 items finish, then SIGKILL the runner on the host.
    let got = follow(&host, "fe-1", Arc::new(NoRedaction), |g| {
        g.checkpoints.last().is_some_and(|c| c.done >= 80)
    })
    .await;
    let runner: ProcessIdentity = serde_json::from_slice(
        &std::fs::read(lab.ticket_dir(0, "fe-1").join("runner.json")).unwrap(),
    )
    .unwrap();
    kill9(runner.pid);
    let rest = follow(&host, "fe-1", Arc::new(NoRedaction), |_| false).await;
    let reason = rest.interrupted().expect("interrupted, not ended");
    assert!(reason.contains("gone"), "{reason}");
    assert!(got.checkpoints.len() >= 80);
    // The coordinator resumes from the last checkpoint the host made
    // durable (all of them were read once the ticket was final).
    let last = rest.checkpoints.last().expect("checkpoints").clone();
    // The guard kills the dead runner's items; no one appends after that.
    std::thread::sleep(Duration::from_millis(300));
    let before_resume = lines(&items_log).len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lines(&items_log).len(),
        before_resume,
        "the old runner's items are dead"
    );

    let mut second = foreach_request("fe-2", &items_log, 200);
    second.attempt = 2;
    second.resume_from = Some(last.data.clone());
    host.start(&second).await.unwrap();
    let done = follow_to_end(&host, "fe-2").await;
    match done.end() {
        Some(EndState::Succeeded { outputs, .. }) => assert_eq!(outputs["count"], "200"),
        other => panic!("{other:?}"),
    }
    let all = lines(&items_log);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for it in &all {
        *counts.entry(it.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 200, "every item ran");
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 4 && counts.values().all(|n| *n <= 2),
        "only the items in flight (concurrency 4) may repeat: {repeated:?}"
    );
    eprintln!(
        "killed after {} of 200; {} item(s) repeated",
        last.done,
        repeated.len()
    );
}

#[tokio::test]
async fn a_simulated_reboot_interrupts_the_hosts_step_and_a_reboot_is_confirmed_by_boot_id() {
    let Some(mut lab) = Lab::start(2) else {
        return;
    };
    let h2 = lab.remote(1);
    let h1 = lab.remote(0);
    let pid_file = lab.hosts[1].dir.join("sleeper.pid");
    h2.start(&sh(
        "long",
        &format!("sleep 300 & echo $! > '{}'; wait", pid_file.display()),
    ))
    .await
    .unwrap();
    // A step on the other host is not affected.
    let other_runs = lab.hosts[0].dir.join("runs");
    h1.start(&counting_step("other", &other_runs, 20, "0.1"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the step to start", || {
        lines(&pid_file).len() == 1
    });
    let sleeper: u32 = lines(&pid_file)[0].parse().unwrap();
    lab.simulate_reboot(1);
    assert!(
        !crate::support::alive(sleeper),
        "the reboot killed the host's processes"
    );
    let got = follow_to_end(&h2, "long").await;
    let reason = got.interrupted().expect("interrupted");
    assert!(reason.contains("rebooted"), "{reason}");
    let other = follow_to_end(&h1, "other").await;
    assert_eq!(other.output, expected_lines(20));
    assert_eq!(lines(&other_runs).len(), 1);

    // The reboot API: ask, the host goes down and comes back (simulated
    // when the host's reboot command ran), confirmed by a new boot id.
    let before = h2.facts().await.unwrap().boot_id;
    let log = lab.hosts[1].reboot_log.clone();
    let simulate = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "the reboot command", || {
            lines(&log).len() == 1
        });
        std::thread::sleep(Duration::from_millis(300));
        lab.simulate_reboot(1);
        lab
    });
    let confirmed = h2
        .reboot_and_confirm(Duration::from_secs(30))
        .await
        .unwrap();
    let lab = simulate.await.unwrap();
    assert_eq!(confirmed.before, before);
    assert_ne!(confirmed.after.boot_id, before);
    assert_eq!(
        confirmed.after.boot_id,
        std::fs::read_to_string(&lab.hosts[1].boot_id_file)
            .unwrap()
            .trim()
    );
    assert_eq!(lines(&lab.hosts[1].reboot_log).len(), 1, "one reboot asked");
    // After the reboot, a step runs there again.
    h2.start(&sh("after", "echo back")).await.unwrap();
    assert_eq!(follow_to_end(&h2, "after").await.output, "back\n");
}
