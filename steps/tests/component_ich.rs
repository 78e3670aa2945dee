//! `ich.cleanup_conferences` end to end with real processes: the stand-in
//! `systemctl` (steps/tests/standins/) runs an "ICH" hook script on start
//! that, when the config says CleanupConferences=true, writes conference
//! lines to ConferenceTerminationLog.txt. The step turns the option on,
//! restarts ICH, follows the log, turns the option off and restarts again.

// Unix only: the stand-in here is a shell script (steps/tests/standins/).
// On Windows the real program is exercised instead, under Wine by
// tests/wine/e2e (see docs/windows.md).
#![cfg(unix)]

use std::path::{Path, PathBuf};

use upshift_steps::testing::TestContext;
use upshift_steps::{Step, StepError, registry};

const CONFIG: &str = "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<configuration>\r\n  <appSettings>\r\n    <!-- Cleanup of old conferences, see the manual -->\r\n    <add key=\"CleanupConferences\" value=\"false\" />\r\n    <add key=\"LogLevel\" value=\"Debug\" />\r\n  </appSettings>\r\n</configuration>\r\n";

struct World {
    dir: tempfile::TempDir,
}

impl World {
    /// An ICH folder with its config, and a stand-in systemctl whose
    /// `tm-ich` unit writes `n` conference lines when cleanup is on.
    fn new(n: usize) -> World {
        World::with_hook(&format!(
            "echo \"$(date '+%F %T') INFO  Found {n} conferences without expiration time\" >> \"$log\"\n\
             i=0\n\
             while [ $i -lt {n} ]; do\n\
               i=$((i + 1))\n\
               echo \"$(date '+%F %T') INFO  Conference 'sip:organizer@corp.local;gruu;opaque=app:conf:focus:id:C$i' expiration time set to 2026-12-24 02:31:25\" >> \"$log\"\n\
               sleep 0.05\n\
             done\n"
        ))
    }

    /// As [`World::new`], with `body` run by the ICH unit when cleanup is
    /// on (`$log` is the log's path).
    fn with_hook(body: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("TM-ICH/log")).unwrap();
        std::fs::write(root.join("TM-ICH/TM.ICH.Service.exe.config"), CONFIG).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/systemctl");
        std::fs::copy(&src, root.join("systemctl")).unwrap();
        let state = root.join("systemctl-state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("tm-ich.unit"), "").unwrap();
        std::fs::write(state.join("tm-ich.active"), "active\n").unwrap();
        let hook = state.join("tm-ich.on-start");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\n\
                 cfg='{cfg}'\nlog='{log}'\n\
                 grep -q 'key=\"CleanupConferences\" value=\"true\"' \"$cfg\" || exit 0\n\
                 {body}",
                cfg = root.join("TM-ICH/TM.ICH.Service.exe.config").display(),
                log = root
                    .join("TM-ICH/log/ConferenceTerminationLog.txt")
                    .display(),
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&hook)
            .status()
            .unwrap();
        World { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn step(&self, rest: &str) -> Box<dyn Step> {
        let q = |p: &str| toml::Value::String(self.path(p).display().to_string()).to_string();
        let with: toml::Table = toml::from_str(&format!(
            "service = \"tm-ich\"\nconfig = {}\nsystemctl = {}\npoll_interval = \"20ms\"\n{rest}",
            q("TM-ICH/TM.ICH.Service.exe.config"),
            q("systemctl")
        ))
        .unwrap();
        registry()
            .get("ich.cleanup_conferences")
            .unwrap()
            .build(&with)
            .unwrap()
    }
    fn config(&self) -> String {
        std::fs::read_to_string(self.path("TM-ICH/TM.ICH.Service.exe.config")).unwrap()
    }
    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.path("systemctl-state/calls.log"))
            .unwrap_or_default()
            .matches("restart tm-ich")
            .count()
    }
    fn ctx(&self) -> TestContext {
        TestContext::new("ich_cleanup", self.path("work"))
    }
}

#[tokio::test]
async fn cleans_until_count_then_turns_the_option_off() {
    let w = World::new(4);
    // Lines from an earlier run are not counted.
    std::fs::write(
        w.path("TM-ICH/log/ConferenceTerminationLog.txt"),
        "2025-01-01 00:00:00 INFO  Conference 'old' expiration time set to 2025-02-01\n",
    )
    .unwrap();
    let step = w.step("count = 4\nquiet_for = \"10m\"");
    let ctx = w.ctx();
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["cleaned"], "4");
    assert_eq!(out.outputs["total"], "4");
    assert_eq!(out.outputs["finished_by"], "count");
    // The option is off again, and the file is otherwise byte-identical.
    assert_eq!(w.config(), CONFIG);
    assert_eq!(
        w.restarts(),
        2,
        "one restart to turn it on, one to turn it off"
    );
    // Progress with an ETA at 20 s per conference.
    let progress = ctx.progress.lock().unwrap().clone();
    assert!(
        progress.iter().any(|(d, t, m)| *t == 4
            && *d < 4
            && m.contains("of 4 conferences, about")
            && m.contains("s left")),
        "{progress:?}"
    );
    // Checkpoints carry the byte offset, increasing.
    let offsets: Vec<u64> = ctx
        .checkpoints
        .lock()
        .unwrap()
        .iter()
        .map(|(d, _, _)| {
            let t = String::from_utf8_lossy(d).to_string();
            t.lines()
                .find_map(|l| l.strip_prefix("offset="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(offsets[0] > 0, "started after the old lines: {offsets:?}");
}

#[tokio::test]
async fn quiet_log_finishes() {
    let w = World::new(2);
    let step = w.step("quiet_for = \"400ms\"");
    let out = step.run(&w.ctx()).await.unwrap();
    assert_eq!(out.outputs["finished_by"], "quiet");
    assert_eq!(out.outputs["cleaned"], "2");
    assert_eq!(w.config(), CONFIG);
}

#[tokio::test]
async fn crash_while_following_resumes_from_the_checkpoint_offset() {
    let w = World::new(5);
    let step = w.step("count = 5");
    let mut first = w.ctx();
    // Checkpoints: 1 = before enabling, 2 = after the restart, 3 = first
    // growth of the log: the engine "dies" there.
    first.fail_checkpoint_at = Some(3);
    assert!(step.run(&first).await.is_err());
    assert!(
        w.config()
            .contains("key=\"CleanupConferences\" value=\"true\"")
    );
    assert_eq!(w.restarts(), 1);

    let mut resumed = w.ctx();
    resumed.resume = first.last_checkpoint();
    let out = step.run(&resumed).await.unwrap();
    // Every conference counted exactly once, no extra restart to resume.
    assert_eq!(out.outputs["cleaned"], "5");
    assert_eq!(w.restarts(), 2);
    assert_eq!(w.config(), CONFIG);
}

#[tokio::test]
async fn compensation_turns_the_option_off() {
    let w = World::new(0);
    let on = CONFIG.replace("value=\"false\"", "value=\"true\"");
    std::fs::write(w.path("TM-ICH/TM.ICH.Service.exe.config"), &on).unwrap();
    let step = w.step("");
    assert!(matches!(
        step.probe(&w.ctx()).await.unwrap(),
        upshift_steps::Probe::Differs(_)
    ));
    step.compensate(&w.ctx()).await.unwrap();
    assert_eq!(w.config(), CONFIG);
    assert_eq!(w.restarts(), 1);
    step.compensate(&w.ctx()).await.unwrap();
    assert_eq!(w.restarts(), 1, "nothing to undo the second time");
}

#[test]
fn describe_lists_the_plan() {
    let w = World::new(0);
    let d = w.step("count = 10").describe().join("\n");
    assert!(
        d.contains("set appSettings `CleanupConferences` = \"true\""),
        "{d}"
    );
    assert!(
        d.contains("ConferenceTerminationLog.txt until 10 conferences"),
        "{d}"
    );
    assert!(
        d.contains("set appSettings `CleanupConferences` = \"false\""),
        "{d}"
    );
}

#[tokio::test]
async fn a_log_that_never_appears_pauses_and_approval_goes_on() {
    // This ICH writes nothing with the option on (wrong log folder, no
    // rights, ...).
    let w = World::with_hook("exit 0\n");
    let step = w.step("quiet_for = \"600ms\"\nlog_wait = \"200ms\"");
    let first = w.ctx();
    let Err(StepError::WaitForOperator { reason }) = step.run(&first).await else {
        panic!("no pause");
    };
    for part in [
        "ConferenceTerminationLog.txt did not appear within 200ms",
        "Looked at:",
        "TM \u{2013} ICH\\log",
        "the service `tm-ich` runs",
        "`upshift approve`",
    ] {
        assert!(reason.contains(part), "`{part}` missing: {reason}");
    }
    // Still on while the operator looks.
    assert!(
        w.config()
            .contains("key=\"CleanupConferences\" value=\"true\"")
    );
    assert_eq!(w.restarts(), 1);

    let mut approved = w.ctx();
    approved.approved = true;
    approved.resume = first.last_checkpoint();
    let out = step.run(&approved).await.unwrap();
    assert_eq!(out.outputs["cleaned"], "0");
    assert_eq!(out.outputs["finished_by"], "quiet");
    assert_eq!(w.config(), CONFIG);
    assert_eq!(w.restarts(), 2);
}

#[tokio::test]
async fn errors_in_the_log_are_counted_and_reported() {
    let w = World::with_hook(
        "echo \"$(date '+%F %T') INFO  Found 2 conferences without expiration time\" >> \"$log\"\n\
         echo \"$(date '+%F %T') INFO  Conference 'A' expiration time set to 2026-12-24 02:31:25\" >> \"$log\"\n\
         echo \"$(date '+%F %T') ERROR Conference 'B' could not be updated: timeout\" >> \"$log\"\n",
    );
    let step = w.step("quiet_for = \"400ms\"");
    let ctx = w.ctx();
    let out = step.run(&ctx).await.unwrap().outputs;
    assert_eq!(out["cleaned"], "1");
    assert_eq!(out["errors"], "1");
    assert!(
        out["error_lines"].contains("Conference 'B' could not be updated"),
        "{out:?}"
    );
    let text = ctx.output_text();
    assert!(
        text.contains("1 conferences cleaned, 1 errors (first:"),
        "{text}"
    );
}

#[tokio::test]
async fn disabled_is_a_no_op_that_says_so() {
    let w = World::new(3);
    for enabled in ["false", "\"false\""] {
        let step = w.step(&format!("enabled = {enabled}"));
        assert!(
            step.describe()[0].contains("not requested"),
            "{:?}",
            step.describe()
        );
        let ctx = w.ctx();
        let out = step.run(&ctx).await.unwrap().outputs;
        assert_eq!(out["finished_by"], "disabled");
        assert_eq!(out["cleaned"], "0");
        assert!(
            ctx.output_text()
                .contains("`CleanupConferences` is \"false\""),
            "{}",
            ctx.output_text()
        );
        assert!(!step.has_compensation());
    }
    assert_eq!(w.config(), CONFIG);
    assert_eq!(w.restarts(), 0);
}

#[test]
fn the_dry_run_states_the_assumptions() {
    let w = World::new(0);
    let d = w.step("").describe().join("\n");
    assert!(
        d.contains("ASSUMPTION (log format, not in the manual)"),
        "{d}"
    );
    assert!(d.contains("pause if no line arrives within 5m"), "{d}");
    assert!(d.contains("TM \u{2013} ICH"), "{d}");
}
