//! The ticket contract through the local transport (no sshd): start once,
//! attach, abort, timeout, secrets, probe and compensate on the host.

use std::sync::Arc;
use std::time::Duration;

use upshift_remote::client::Started;
use upshift_remote::protocol::{EndState, ProbeAnswer, StepOp, TicketId};
use upshift_steps::redact::Redactor;

use crate::support::{alive, follow, follow_to_end, lines, local_host, request, sh, wait_until};

#[tokio::test]
async fn a_ticket_runs_once_and_a_second_start_attaches() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let host = local_host(&dir.path().join("work"));
    let req = sh(
        "t1",
        &format!("echo run >> '{}'; echo hello", count.display()),
    );
    assert!(matches!(
        host.start(&req).await.unwrap(),
        Started::New { .. }
    ));
    assert_eq!(host.installs(), 1, "the binary is installed on first use");
    let got = follow_to_end(&host, "t1").await;
    match got.end() {
        Some(EndState::Succeeded { outputs, .. }) => {
            assert_eq!(outputs["stdout"], "hello");
            assert_eq!(outputs["exit_code"], "0");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got.output, "hello\n");
    // Again, from another coordinator handle: attaches, runs nothing.
    let again = local_host(&dir.path().join("work"));
    assert_eq!(again.start(&req).await.unwrap(), Started::Existing);
    assert_eq!(
        again.installs(),
        0,
        "same binary, same hash: not copied again"
    );
    let got2 = follow_to_end(&again, "t1").await;
    assert_eq!(got2.output, "hello\n");
    assert_eq!(lines(&count), vec!["run"], "the step ran exactly once");
    // The same ticket id for another step is refused, not attached.
    let mut other = sh("t1", "true");
    other.step_id = "another".into();
    let e = again.start(&other).await.unwrap_err();
    assert!(e.to_string().contains("another step"), "{e}");
}

#[tokio::test]
async fn abort_and_timeout_kill_the_step_process_tree_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = local_host(&dir.path().join("work"));
    for (ticket, timeout) in [("abort", None), ("timeout", Some(400))] {
        let pid_file = dir.path().join(format!("{ticket}.pid"));
        let mut req = sh(
            ticket,
            &format!("sleep 300 & echo $! > '{}'; wait", pid_file.display()),
        );
        req.timeout_ms = timeout;
        host.start(&req).await.unwrap();
        wait_until(Duration::from_secs(10), "the grandchild's pid", || {
            lines(&pid_file).len() == 1
        });
        let sleeper: u32 = lines(&pid_file)[0].parse().unwrap();
        assert!(alive(sleeper));
        if timeout.is_none() {
            host.abort(&TicketId::new(ticket).unwrap(), "operator said stop")
                .await
                .unwrap();
        }
        let got = follow_to_end(&host, ticket).await;
        match (ticket, got.end()) {
            ("abort", Some(EndState::Aborted { reason })) => {
                assert_eq!(reason, "operator said stop")
            }
            ("timeout", Some(EndState::TimedOut { timeout_ms: 400 })) => {}
            (_, other) => panic!("{ticket}: {other:?}"),
        }
        wait_until(Duration::from_secs(5), "the step's tree to die", || {
            !alive(sleeper)
        });
    }
}

#[tokio::test]
async fn secrets_stay_off_the_hosts_disk_and_command_lines() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let host = local_host(&work);
    let secret = "Tr0ub4dor-and-3";
    let mut with = toml::Table::new();
    with.insert("program".into(), "sh".into());
    with.insert(
        "args".into(),
        toml::Value::Array(vec![
            "-c".into(),
            // Printed whole, then split across two writes.
            "echo \"pw=$PW\"; printf 'Tr0ub4'; sleep 0.3; printf 'dor-and-3 end\\n'; sleep 1"
                .into(),
        ]),
    );
    let mut env = toml::Table::new();
    env.insert("PW".into(), secret.into());
    with.insert("env".into(), toml::Value::Table(env));
    let mut req = request("s1", "process", with);
    req.secrets = vec![secret.to_string()];
    host.start(&req).await.unwrap();
    // While it runs: no process has the secret on its command line.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        crate::support::sshd::processes_with_cmdline(secret).is_empty(),
        "a command line holds the secret"
    );
    let redactor = Redactor::new([secret.to_string()]);
    let got = follow(&host, "s1", Arc::new(redactor), |_| false).await;
    assert!(
        matches!(got.end(), Some(EndState::Succeeded { .. })),
        "{got:?}"
    );
    assert_eq!(got.output, "pw=***\n*** end\n");
    // Nothing under the host's work folder holds it, in any file.
    let mut stack = vec![work.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.starts_with(work.join("bin")) {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
    assert!(files >= 5, "the ticket's files were checked ({files})");
}

#[tokio::test]
async fn probe_and_compensate_run_on_the_host_too() {
    let dir = tempfile::tempdir().unwrap();
    let host = local_host(&dir.path().join("work"));
    let original = dir.path().join("app.config");
    std::fs::write(&original, "v1").unwrap();
    let mut with = toml::Table::new();
    with.insert("file".into(), original.display().to_string().into());
    let run = request("b-run", "file.backup", with.clone());
    host.start(&run).await.unwrap();
    let outputs = match follow_to_end(&host, "b-run").await.end() {
        Some(EndState::Succeeded { outputs, .. }) => outputs.clone(),
        other => panic!("{other:?}"),
    };
    let copy = std::path::PathBuf::from(&outputs["path"]);
    assert!(
        copy.starts_with(dir.path().join("work/steps/run1/step-b-run")),
        "the copy is in the step's work folder on the host: {}",
        copy.display()
    );
    let mut probe = request("b-probe", "file.backup", with.clone());
    probe.op = StepOp::Probe;
    probe.step_id = run.step_id.clone();
    probe.recorded_outputs = outputs.clone();
    host.start(&probe).await.unwrap();
    assert_eq!(
        follow_to_end(&host, "b-probe").await.end(),
        Some(&EndState::Probed {
            probe: ProbeAnswer::InPlace
        })
    );
    let mut undo = probe.clone();
    undo.ticket = TicketId::new("b-undo").unwrap();
    undo.op = StepOp::Compensate;
    host.start(&undo).await.unwrap();
    assert!(matches!(
        follow_to_end(&host, "b-undo").await.end(),
        Some(EndState::Succeeded { .. })
    ));
    assert!(!copy.exists(), "compensation deleted the copy");
}

#[tokio::test]
async fn an_unknown_kind_or_bad_parameters_never_start() {
    let dir = tempfile::tempdir().unwrap();
    let host = local_host(&dir.path().join("work"));
    host.start(&request("k1", "no.such.kind", toml::Table::new()))
        .await
        .unwrap();
    match follow_to_end(&host, "k1").await.end() {
        Some(EndState::NotStarted { reason }) => {
            assert!(reason.contains("no.such.kind"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    host.start(&request("k2", "process", toml::Table::new()))
        .await
        .unwrap();
    match follow_to_end(&host, "k2").await.end() {
        Some(EndState::NotStarted { reason }) => assert!(reason.contains("program"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
