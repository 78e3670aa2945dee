//! `lync.conferencing_policy` through the stand-in `pwsh`: address
//! validation, one run per connector with the address as a parameter, a
//! checkpoint per connector, and a resume that skips the connectors done.

// Unix only: the stand-in here is a shell script (steps/tests/standins/).
// On Windows the real program is exercised instead, under Wine by
// tests/wine/e2e (see docs/windows.md).
#![cfg(unix)]

use std::path::{Path, PathBuf};

use upshift_steps::testing::TestContext;
use upshift_steps::{Step, registry};

fn standin() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/pwsh");
    let prog = dir.path().join("pwsh");
    std::fs::copy(&src, &prog).unwrap();
    std::fs::create_dir_all(dir.path().join("pwsh-state")).unwrap();
    (dir, prog)
}

fn step(prog: &Path, connectors: &[&str]) -> Box<dyn Step> {
    let list = connectors
        .iter()
        .map(|c| toml::Value::String(c.to_string()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let with: toml::Table = toml::from_str(&format!(
        "program = {}\nconnectors = [{list}]",
        toml::Value::String(prog.display().to_string())
    ))
    .unwrap();
    registry()
        .get("lync.conferencing_policy")
        .unwrap()
        .build(&with)
        .unwrap()
}

const C: [&str; 3] = [
    "sip:lucs_agent_connector_00@SIPDomain.com",
    "sip:lucs_agent_connector_01@SIPDomain.com",
    "sip:lucs_agent_connector_02@SIPDomain.com",
];

fn calls(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for n in 1.. {
        let Ok(env) = std::fs::read_to_string(dir.join(format!("pwsh-state/{n}.env"))) else {
            break;
        };
        out.push(env);
    }
    out
}

#[tokio::test]
async fn grants_per_connector_and_resume_skips_done_ones() {
    let (dir, prog) = standin();
    // The hook plays Grant-CsConferencingPolicy: it fails once for
    // connector_01 (as if the Lync front end were busy).
    let flag = dir.path().join("fail-once");
    std::fs::write(&flag, "").unwrap();
    let hook = dir.path().join("pwsh-state/hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncase \"$UPSHIFT_PS_NAMED_Sip\" in *connector_01*) if [ -e '{0}' ]; then rm '{0}'; echo 'Grant-CsConferencingPolicy: endpoint busy'; exit 1; fi;; esac\necho \"granted $UPSHIFT_PS_NAMED_PolicyName to $UPSHIFT_PS_NAMED_Sip\"\n",
            flag.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();

    let s = step(&prog, &C);
    let first = TestContext::new("policy", dir.path().join("work"));
    let e = s.run(&first).await.unwrap_err().to_string();
    assert!(
        e.contains("connector_01") && e.contains("endpoint busy") && e.contains("1 of 3"),
        "{e}"
    );
    assert_eq!(first.checkpoints.lock().unwrap().len(), 1);

    let mut resumed = TestContext::new("policy", dir.path().join("work"));
    resumed.resume = first.last_checkpoint();
    let out = s.run(&resumed).await.unwrap();
    assert_eq!(out.outputs["granted"], "2");
    assert_eq!(out.outputs["skipped"], "1");
    assert!(
        resumed
            .output_text()
            .contains("connector_00@SIPDomain.com: done in an earlier attempt")
    );
    assert!(
        resumed
            .output_text()
            .contains("granted Tag:LucsService to sip:lucs_agent_connector_02@SIPDomain.com")
    );

    // connector_00 once, connector_01 twice (failed, then granted), 02 once.
    let envs = calls(dir.path());
    assert_eq!(envs.len(), 4);
    let count = |c: &str| {
        envs.iter()
            .filter(|e| e.contains(&format!("UPSHIFT_PS_NAMED_Sip={c}\n")))
            .count()
    };
    assert_eq!((count(C[0]), count(C[1]), count(C[2])), (1, 2, 1));
    assert!(envs[0].contains("UPSHIFT_PS_NAMED_PolicyName=Tag:LucsService\n"));
    // The script is fixed; the address is not in it.
    let launcher = std::fs::read_to_string(dir.path().join("pwsh-state/1.launcher")).unwrap();
    assert!(!launcher.contains("connector"), "{launcher}");
}

#[tokio::test]
async fn changed_list_refuses_to_resume() {
    let (dir, prog) = standin();
    let s = step(&prog, &C);
    let first = TestContext::new("policy", dir.path().join("work"));
    s.run(&first).await.unwrap();
    let other = step(&prog, &C[..2]);
    let mut resumed = TestContext::new("policy", dir.path().join("work"));
    resumed.resume = first.last_checkpoint();
    let e = other.run(&resumed).await.unwrap_err().to_string();
    assert!(e.contains("connector list changed"), "{e}");
}

#[test]
fn addresses_are_validated() {
    let err = |c: &str| {
        let with: toml::Table =
            toml::from_str(&format!("connectors = [{}]", toml::Value::String(c.into()))).unwrap();
        registry()
            .get("lync.conferencing_policy")
            .unwrap()
            .build(&with)
            .err()
            .map(|e| e.message)
    };
    assert_eq!(err("sip:a.b_c-d@corp.example.com"), None);
    assert!(err("lucs@corp.com").unwrap().contains("sip:"));
    assert!(err("sip:lucs").unwrap().contains("@"));
    assert!(err("sip:lu cs@corp.com").unwrap().contains("user part"));
    assert!(err("sip:x@corp").unwrap().contains("not a domain"));
    assert!(
        err("sip:x@corp.com\"; Remove-Item C:\\")
            .unwrap()
            .contains("not a domain")
    );
}

#[test]
fn describe_shows_the_manuals_lines() {
    let (_dir, prog) = standin();
    let d = step(&prog, &C[..1]).describe();
    assert_eq!(
        d,
        [
            "powershell: Get-CsTrustedApplicationEndpoint sip:lucs_agent_connector_00@SIPDomain.com | Grant-CsConferencingPolicy -PolicyName \"Tag:LucsService\""
        ]
    );
}
