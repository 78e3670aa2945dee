//! Site files as an operator writes them (issue 14): the corpus in
//! `tests/fixtures/sites` through `upshift check`, one error per mistake at
//! the right line; a missing `--site`; paths relative to the file naming
//! them; SQL named instances.

use std::path::{Path, PathBuf};

use crate::support::{Ran, Sandbox};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn corpus() -> PathBuf {
    root().join("tests/fixtures/sites")
}

/// `upshift ARGS` run in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Ran {
    let sb = Sandbox::new();
    let out = sb
        .cmd(args)
        .current_dir(dir)
        .env("TM_SQL_PASSWORD", "pw")
        .output()
        .expect("spawn upshift");
    Ran {
        code: out.status.code(),
        signal: None,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The error lines of a check (`FILE:LINE:COL: error: ...`), without
/// main's `upshift: ` prefix.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| l.strip_prefix("upshift: ").unwrap_or(l))
        .filter(|l| l.contains(": error: "))
        .map(str::to_string)
        .collect()
}

/// Every file of the corpus: a valid one checks ok; a mistake gives
/// exactly its `# expect:` lines (no follow-on errors, each once) and its
/// `# hint:`s.
#[test]
fn the_site_corpus_gives_exactly_the_expected_errors() {
    let dir = corpus();
    let plan = root().join("plans/teammanager.toml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "the corpus is in {}", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        let field = |tag: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(tag))
                .map(|l| l.replace("@DIR@", &dir.display().to_string()))
                .collect()
        };
        let expect = field("# expect: ");
        let hints = field("# hint: ");
        assert!(!expect.is_empty(), "{name}: no `# expect:` line");
        let r = run_in(&dir, &["check", plan.to_str().unwrap(), "--site", name]);
        if expect == ["ok"] {
            if r.code != Some(0) {
                failures.push(format!(
                    "{name}: expected ok, got {:?}:\n{}",
                    r.code, r.stderr
                ));
            }
            continue;
        }
        let got = error_lines(&r.stderr);
        if r.code != Some(2) || got != expect {
            failures.push(format!(
                "{name}: expected exit 2 and exactly\n  {}\ngot exit {:?} and\n  {}\n--- stderr\n{}",
                expect.join("\n  "),
                r.code,
                got.join("\n  "),
                r.stderr
            ));
            continue;
        }
        for h in &hints {
            if !r.stderr.contains(h.as_str()) {
                failures.push(format!("{name}: no hint `{h}` in\n{}", r.stderr));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A `--site` file that does not exist: one error (not one per site
/// reference), naming the file as resolved from the current folder.
#[test]
fn a_missing_site_file_is_one_error_relative_to_the_current_folder() {
    let sb = Sandbox::new();
    let plan = root().join("plans/teammanager.toml");
    let r = run_in(
        sb.path(),
        &["check", plan.to_str().unwrap(), "--site", "nope.toml"],
    );
    r.expect(2);
    let abs = sb.path().canonicalize().unwrap().join("nope.toml");
    let abs_plain = sb.path().join("nope.toml");
    let got = error_lines(&r.stderr);
    assert_eq!(got.len(), 1, "one mistake, one error:\n{}", r.stderr);
    assert!(
        got[0].starts_with(&format!(
            "nope.toml: error: cannot read the site file {}: ",
            abs_plain.display()
        )) || got[0].contains(&abs.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("hint: --site is relative to the current folder"),
        "{}",
        r.stderr
    );
}

/// Paths in a plan are relative to the plan file, wherever upshift is
/// started: `check` names a folder the run needs that is missing (the
/// line that names it), and the run uses the same path `check` verified.
#[test]
fn paths_are_relative_to_the_file_that_names_them_in_check_and_run() {
    let sb = Sandbox::new();
    let plans = sb.path().join("plans");
    std::fs::create_dir_all(plans.join("work")).unwrap();
    let plan = plans.join("p.toml");
    std::fs::write(
        &plan,
        format!(
            r#"name = "paths"

[vars]
scripts_dir = "sql"

[secrets]
pw = {{ env = "TM_SQL_PASSWORD" }}

[targets.db]
host = "127.0.0.1"
database = "TM"
user = "sa"
password = "${{secrets.pw}}"

[steps.here]
kind = "process"
with = {{ program = "sh", args = ["-c", "pwd > {m}/pwd"], cwd = "work" }}

[steps.update]
kind = "db.update"
needs = ["here"]
with = {{ target = "db", scripts_dir = "${{vars.scripts_dir}}", target_version = "8.0" }}
"#,
            m = sb.markers().display()
        ),
    )
    .unwrap();
    // Started from another folder (the sandbox, not plans/).
    let r = run_in(sb.path(), &["check", "plans/p.toml"]);
    r.expect(2);
    let want = plans.join("sql");
    assert_eq!(
        error_lines(&r.stderr),
        [format!(
            "plans/p.toml:4:1: error: step `update` needs the folder {} (scripts_dir), which does not exist",
            want.display()
        )],
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "hint: `sql` is relative to [vars] scripts_dir: the plan file's folder, {}",
            plans.display()
        )),
        "{}",
        r.stderr
    );
    std::fs::create_dir_all(&want).unwrap();
    run_in(sb.path(), &["check", "plans/p.toml"]).expect(0);
    let dry = run_in(sb.path(), &["run", "plans/p.toml", "--dry-run"]);
    dry.expect(0);
    assert!(
        dry.stdout
            .contains(&format!("with the scripts in {}", want.display())),
        "{}",
        dry.stdout
    );
    // The run (the first step only: the second needs a SQL Server) uses
    // the plan's folder too.
    std::fs::write(
        &plan,
        std::fs::read_to_string(&plan)
            .unwrap()
            .split("[steps.update]")
            .next()
            .unwrap(),
    )
    .unwrap();
    let r = run_in(sb.path(), &["run", "plans/p.toml"]);
    r.expect(0);
    assert_eq!(
        sb.marker_lines("pwd"),
        [plans.join("work").display().to_string()],
        "{}",
        r.stderr
    );
}

/// `[sql] instance` reaches the connection: the dry run shows it.
#[test]
fn a_named_sql_instance_reaches_the_connection() {
    let dir = corpus();
    let plan = root().join("plans/teammanager.toml");
    let r = run_in(
        &dir,
        &[
            "run",
            plan.to_str().unwrap(),
            "--site",
            "sql-named-instance.toml",
            "--dry-run",
        ],
    );
    r.expect(0);
    assert!(
        r.stdout
            .contains("sql01.contoso.com\\TMSQL/TM (sql login upshift)"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("sql01.contoso.com:1433"), "{}", r.stdout);
}

/// A relative `--var` path is the current folder's when the run starts; a
/// resume started in another folder still uses that one (the run pins it
/// absolute).
#[test]
fn a_resume_in_another_folder_uses_the_paths_the_run_started_with() {
    let sb = Sandbox::new();
    let a = sb.path().join("a");
    let b = sb.path().join("b");
    std::fs::create_dir_all(a.join("work")).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let plan = sb.plan(
        "p.toml",
        r#"name = "resume-paths"
[steps.gate]
kind = "manual"
with = { instructions = "approve" }
[steps.here]
kind = "process"
needs = ["gate"]
with = { program = "sh", args = ["-c", "pwd > @M@/pwd"], cwd = "${vars.wd}" }
"#,
    );
    let p = plan.to_str().unwrap();
    let j = sb.journal();
    let j = j.to_str().unwrap();
    let in_dir = |dir: &Path, args: &[&str]| -> Ran {
        let out = sb.cmd(args).current_dir(dir).output().expect("spawn");
        Ran {
            code: out.status.code(),
            signal: None,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let started = in_dir(&a, &["run", p, "--var", "wd=work", "--journal", j]);
    started.expect(3);
    let run = started.run_id();
    in_dir(&b, &["approve", &run, "gate", "--journal", j]).expect(0);
    let resumed = in_dir(&b, &["resume", &run, "--journal", j]);
    resumed.expect(0);
    assert_eq!(
        sb.marker_lines("pwd"),
        [a.join("work").display().to_string()],
        "{}",
        resumed.stderr
    );
}

/// A secret's `file` in the plan is relative to the plan file.
#[test]
fn a_secret_file_is_relative_to_the_plan_file() {
    let sb = Sandbox::new();
    let plans = sb.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(plans.join("token.txt"), "s3cr3t-value\n").unwrap();
    std::fs::write(
        plans.join("p.toml"),
        format!(
            r#"name = "secret-file"
[secrets]
token = {{ file = "token.txt" }}
[steps.use]
kind = "process"
with = {{ program = "sh", args = ["-c", "test \"$T\" = s3cr3t-value && echo ok > {m}/ok"], env = {{ T = "${{secrets.token}}" }} }}
"#,
            m = sb.markers().display()
        ),
    )
    .unwrap();
    let out = sb
        .cmd(&["run", "plans/p.toml"])
        .current_dir(sb.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.marker_lines("ok"), ["ok"]);
}
