//! `upshift check`: every kind of plan error, located, with a hint. One
//! table drives the cases.

use crate::support::Sandbox;

/// (plan text, line:col expected, words the message must contain)
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "name = \"x\"\n[steps.a]\nkind = \"proces\"\nwith = { program = \"true\" }\n",
        ":3:8:",
        &["unknown step kind `proces`", "did you mean `process`?"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nneeds = [\"b\"]\nwith = { program = \"true\" }\n",
        ":4:10:",
        &["needs `b`, which is not a step"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nneeds = [\"c\"]\nwith = { program = \"true\" }\n[steps.b]\nkind = \"process\"\nneeds = [\"a\"]\nwith = { program = \"true\" }\n[steps.c]\nkind = \"process\"\nneeds = [\"b\"]\nwith = { program = \"true\" }\n",
        ":",
        &["cycle", "a → b → c → a"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { program = \"${vars.nope}\" }\n",
        ":4:23:",
        &["no variable `nope`", "--var nope=VALUE"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { program = \"${steps.zz.outputs.path}\" }\n",
        ":4:",
        &["outputs of `zz`, which is not a step"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { progam = \"true\" }\n",
        ":4:10:",
        &["unknown field `progam`"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { args = [] }\n",
        ":4:",
        &["missing field `program`"],
    ),
    (
        "name = \"x\"\n[steps.a\nkind = \"process\"\n",
        ":2:",
        &["unclosed table"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"sleep\"\nwith = { duration = \"5 parsecs\" }\n",
        ":4:",
        &["not a duration"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"sleep\"\non_failure = \"explode\"\nwith = { duration = \"1s\" }\n",
        ":4:14:",
        &["not a policy", "\"pause\", \"rollback\" or \"abort\""],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { program = \"${secrets.pw}\" }\n",
        ":4:",
        &["no secret `pw`", "[secrets]"],
    ),
    (
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { program = \"echo\", args = [\"${item}\"] }\n",
        ":4:",
        &["not a foreach"],
    ),
];

#[test]
fn every_plan_error_is_located_explained_and_exits_2() {
    for (i, (text, at, words)) in CASES.iter().enumerate() {
        let sb = Sandbox::new();
        let plan = sb.plan("bad.toml", text);
        let r = sb.run(&["check", plan.to_str().unwrap()]);
        assert_eq!(r.code, Some(2), "case {i}: {r:?}");
        let expected_at = format!("bad.toml{at}");
        assert!(
            r.stderr.contains(&expected_at),
            "case {i}: expected `{expected_at}` in:\n{}",
            r.stderr
        );
        for w in *words {
            assert!(
                r.stderr.contains(w),
                "case {i}: expected `{w}` in:\n{}",
                r.stderr
            );
        }
        // Nothing was journaled by a check.
        assert!(
            !sb.journal().exists(),
            "case {i}: check must not create a journal"
        );
    }
}

#[test]
fn several_errors_are_all_reported() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "bad.toml",
        "name = \"x\"\n[steps.a]\nkind = \"nope\"\n[steps.b]\nkind = \"process\"\nneeds = [\"zz\"]\nwith = { program = \"true\" }\n",
    );
    let r = sb.run(&["check", plan.to_str().unwrap()]);
    r.expect(2);
    assert!(
        r.stderr.contains("bad.toml:3:") && r.stderr.contains("bad.toml:6:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2 problems"), "{}", r.stderr);
}

#[test]
fn a_valid_plan_checks_graphs_and_dry_runs_without_journaling() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "ok.toml",
        r#"
name = "ok"
[vars]
dir = "/srv/tm"
[secrets]
pw = { env = "NOT_SET_ANYWHERE" }
[steps.backup]
kind = "process"
with = { program = "tar", args = ["czf", "${vars.dir}/b.tgz", "--password=${secrets.pw}"] }
[steps.use]
kind = "process"
with = { program = "echo", args = ["${steps.backup.outputs.stdout}"] }
"#,
    );
    let p = plan.to_str().unwrap();
    let r = sb.run(&["check", p]);
    r.expect(0);
    assert!(r.stdout.contains("2 steps, 1 dependencies"), "{}", r.stdout);
    let g = sb.run(&["graph", p, "--format", "dot"]);
    g.expect(0);
    assert!(g.stdout.contains("\"backup\" -> \"use\""), "{}", g.stdout);
    // The dry run resolves vars, shows secrets as placeholders and needs no
    // secret value; the implicit dependency orders the steps.
    let d = sb.run(&["run", p, "--dry-run"]);
    d.expect(0);
    assert!(
        d.stdout
            .contains("run: tar czf /srv/tm/b.tgz '--password=<secret pw>'"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.find("1. backup").unwrap() < d.stdout.find("2. use").unwrap());
    assert!(!sb.journal().exists(), "a dry run must not journal");
}

#[test]
fn hosts_fan_out_and_components_the_site_lacks_in_check_and_dry_run() {
    let sb = Sandbox::new();
    let key = sb.path().join("id_ed25519");
    std::fs::write(&key, "not really a key").unwrap();
    let kh = sb.path().join("known_hosts");
    std::fs::write(&kh, "").unwrap();
    std::fs::write(
        sb.path().join("site.toml"),
        format!(
            "[hosts.tm01]\naddress = \"tm01.corp\"\nuser = \"u\"\nidentity_file = \"{key}\"\nknown_hosts_file = \"{kh}\"\nwork_dir = \"C:/up\"\n\
             [hosts.tm02]\naddress = \"tm02.corp\"\nuser = \"u\"\nidentity_file = \"{key}\"\nknown_hosts_file = \"{kh}\"\nwork_dir = \"C:/up\"\n\
             [hosts.lync]\naddress = \"lync.corp\"\nuser = \"u\"\nidentity_file = \"missing_id\"\nknown_hosts_file = \"{kh}\"\nwork_dir = \"C:/up\"\n\
             [components.ICH]\nhosts = [\"tm01\", \"tm02\"]\n",
            key = key.display(),
            kh = kh.display()
        ),
    )
    .unwrap();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "fan"
site = "site.toml"
hosts = "${site.hosts}"
[locks]
msiexec = 1
[steps.ich_install]
kind = "sleep"
hosts = "${site.components.ICH.hosts}"
locks = ["msiexec"]
with = { duration = "0s" }
[steps.ich_start]
kind = "sleep"
hosts = "${site.components.ICH.hosts}"
needs = ["ich_install"]
with = { duration = "0s" }
[steps.smd_install]
kind = "sleep"
hosts = "${site.components.SMD.hosts}"
with = { duration = "0s" }
[steps.cleanup]
kind = "sleep"
host = "tm02"
needs = ["ich_start", "smd_install"]
with = { duration = "0s" }
"#,
    );
    let p = plan.to_str().unwrap();
    // The lync host's key file is relative to the site file and missing.
    let r = sb.run(&["check", p]);
    r.expect(2);
    assert!(
        r.stderr
            .contains("site.toml:16:1: error: host `lync`: identity_file")
            && r.stderr.contains("cannot be read"),
        "{}",
        r.stderr
    );
    std::fs::write(sb.path().join("missing_id"), "k").unwrap();
    let r = sb.run(&["check", p]);
    r.expect(0);
    assert!(r.stdout.contains("5 steps"), "{}", r.stdout);
    assert!(
        r.stdout.contains("3 host(s): lync, tm01, tm02"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("smd_install: not on this site (the site file has no `components.SMD`)"),
        "{}",
        r.stdout
    );
    let r = sb.run(&["run", p, "--dry-run"]);
    r.expect(0);
    for want in [
        "tm02: ssh u@tm02.corp:22, work dir C:/up",
        "ich_install@tm01 [sleep] on tm01",
        "ich_start@tm02 [sleep] on tm02 (after ich_install@tm02)",
        "cleanup [sleep] on tm02 (after ich_start@tm01, ich_start@tm02)",
        "locks msiexec (per host)",
        "not on this site",
        "smd_install: the site file has no `components.SMD`",
    ] {
        assert!(
            r.stdout.contains(want),
            "missing {want:?} in:\n{}",
            r.stdout
        );
    }
    assert!(!sb.journal().exists(), "a dry run journals nothing");
}
