//! Over real sshd: steps run where they are sent, the binary is installed
//! once by hash, facts come from the host, and refused host keys and logins
//! are clear errors after which nothing ran.

use upshift_remote::RemoteError;
use upshift_remote::client::Started;
use upshift_remote::protocol::EndState;

use crate::support::sshd::Lab;
use crate::support::{follow_to_end, sh};

#[tokio::test]
async fn three_hosts_each_step_runs_on_its_own_host_and_the_binary_is_installed_once() {
    let Some(lab) = Lab::start_empty(3) else {
        return;
    };
    for (i, h) in lab.hosts.iter().enumerate() {
        let host = lab.remote(i);
        let ticket = format!("where-{}", h.name);
        // The step writes where it runs (its cwd is the ticket folder).
        let req = sh(
            &ticket,
            "echo \"$UPSHIFT_TEST_HOST\" > marker; echo ran on $UPSHIFT_TEST_HOST",
        );
        assert!(matches!(
            host.start(&req).await.unwrap(),
            Started::New { .. }
        ));
        assert_eq!(
            host.installs(),
            1,
            "{}: installed over sftp on first use",
            h.name
        );
        let got = follow_to_end(&host, &ticket).await;
        assert_eq!(got.output, format!("ran on {}\n", h.name));
        assert!(matches!(got.end(), Some(EndState::Succeeded { .. })));
        host.close().await;
    }
    for (i, h) in lab.hosts.iter().enumerate() {
        for (j, other) in lab.hosts.iter().enumerate() {
            let marker = lab
                .ticket_dir(i, &format!("where-{}", other.name))
                .join("marker");
            if i == j {
                assert_eq!(
                    std::fs::read_to_string(&marker).unwrap(),
                    format!("{}\n", h.name)
                );
            } else {
                assert!(!marker.exists(), "{} ran on {}", other.name, h.name);
            }
        }
    }
    // A second coordinator finds the binary by its hash: no copy.
    let binary = lab.remote(0).remote_binary();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&binary).unwrap());
    let again = lab.remote(0);
    again.connect().await.unwrap();
    assert_eq!(again.installs(), 0);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&binary).unwrap()),
        inode
    );
}

#[tokio::test]
async fn facts_come_from_the_host() {
    let Some(lab) = Lab::start(1) else {
        return;
    };
    let facts = lab.remote(0).connect().await.unwrap();
    assert_eq!(facts.os, "linux");
    assert_eq!(
        facts.boot_id,
        std::fs::read_to_string(&lab.hosts[0].boot_id_file)
            .unwrap()
            .trim()
    );
    assert_eq!(facts.work_dir, lab.hosts[0].work_dir.display().to_string());
    assert_eq!(facts.user, lab.user);
    assert_eq!(facts.is_admin, nix::unistd::geteuid().is_root());
    assert!(facts.free_bytes.unwrap() > 0);
}

#[tokio::test]
async fn a_changed_or_unknown_host_key_is_refused_and_nothing_runs() {
    let Some(mut lab) = Lab::start(2) else {
        return;
    };
    // Known and accepted first.
    lab.remote(1).connect().await.unwrap();
    lab.change_host_key(1);
    let host = lab.remote(1);
    let e = host
        .start(&sh("k1", "echo ran > marker"))
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::HostKeyChanged { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("host h2") && text.contains("CHANGED"),
        "{text}"
    );
    assert!(!lab.ticket_dir(1, "k1").exists(), "nothing was started");

    // A host missing from known_hosts is refused, not added.
    let mut cfg = lab.ssh_config(0);
    cfg.known_hosts_file = lab.known_hosts_without(0);
    let before = std::fs::read_to_string(&cfg.known_hosts_file).unwrap();
    let e = lab.remote_with(0, cfg.clone()).connect().await.unwrap_err();
    assert!(matches!(e, RemoteError::HostKeyUnknown { .. }), "{e:?}");
    assert!(e.to_string().contains("host h1"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&cfg.known_hosts_file).unwrap(),
        before
    );
    assert!(!e.is_transient(), "a key problem is not retried");
}

#[tokio::test]
async fn a_refused_login_names_the_host_and_the_user() {
    let Some(lab) = Lab::start(1) else {
        return;
    };
    let mut cfg = lab.ssh_config(0);
    cfg.identity_file = lab.wrong_key.clone();
    let host = lab.remote_with(0, cfg);
    let e = host
        .start(&sh("w1", "echo ran > marker"))
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::AuthRefused { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("host h1") && text.contains(&format!("user {}", lab.user)),
        "{text}"
    );
    assert!(!lab.ticket_dir(0, "w1").exists());
}
