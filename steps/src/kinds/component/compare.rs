//! `config.compare`: compares a newly installed `AppSettings.config` with
//! the copy saved at uninstall, so that no setting is silently lost or
//! silently changed (the manual: "compare data from new AppSettings.config
//! ... with the backup copy that was saved during uninstalling TM-FE").
//!
//! Parameters: `file` (the new file), `backup` (the saved copy), `mode` =
//! `"report"` (default: change nothing, never stop) | `"fail"` (fail when a
//! key was lost) | `"carry_over"` (copy lost keys into the new file, by the
//! same splicing code as `config.appsettings`); `changed` (with `fail` and
//! `carry_over`) = `"pause"` (default) | `"keep-old"` | `"keep-new"`: what
//! to do with values the installer changed; `ignore` (keys not compared,
//! e.g. the ones a `config.appsettings` step of the plan sets on purpose).
//!
//! With `changed = "pause"` and changed values, the step waits for an
//! operator, listing each key with both values. Approving (`upshift
//! approve`) keeps what the file holds at that moment: the installer's
//! values, unless the operator edited the file meanwhile to keep some old
//! ones. Lost keys are carried over after the approval.
//!
//! Outputs: `lost`, `added`, `changed` (comma lists of keys, as compared
//! before the step wrote anything), `carried_over`, `kept_old`, `kept_new`
//! (comma lists), `backup_of_file` (the copy of `file` taken before writing,
//! empty otherwise). The table of differences goes to the step's output.
//! Compensation (when the step wrote): restores `file` from
//! `backup_of_file`. Probe: no key of the backup lost (`carry_over`), and
//! the old values in place (`keep-old`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::appsettings::{AppSettingsEdit, load_doc, restore};
use super::shown_value;
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `config.compare` kind.
pub const KIND: KindFn = KindFn {
    name: "config.compare",
    summary: "compare a new AppSettings.config with its backup: report, fail, or carry over lost keys",
    build,
    local_paths: &[],
};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Report,
    Fail,
    CarryOver,
}

fn report() -> Mode {
    Mode::Report
}

/// What to do with a value the installer changed.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum Changed {
    /// Wait for an operator, listing each key with both values.
    Pause,
    /// Put the backup's value back.
    KeepOld,
    /// Keep the installer's value (report it).
    KeepNew,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    file: PathBuf,
    backup: PathBuf,
    #[serde(default = "report")]
    mode: Mode,
    changed: Option<Changed>,
    #[serde(default)]
    ignore: Vec<String>,
}

struct Compare {
    p: Params,
    /// `None` in report mode.
    changed: Option<Changed>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let changed = match (p.mode, p.changed) {
        (Mode::Report, Some(_)) => {
            return Err(ParamError::field(
                "changed",
                "`changed` does nothing with mode = \"report\", which only reports",
            )
            .hint("use mode = \"carry_over\" (or \"fail\") with changed = \"pause\", \"keep-old\" or \"keep-new\""));
        }
        (Mode::Report, None) => None,
        (_, c) => Some(c.unwrap_or(Changed::Pause)),
    };
    Ok(Box::new(Compare { p, changed }))
}

/// Checkpoint mark: the step paused for its changed values, so an approval
/// is an answer to that (and not, say, to a `resume = "ask"`).
const PAUSED_MARK: &str = "changed";

/// The differences between two sets of settings (as .NET reads them: the
/// last `<add>` of a key wins; keys compared case-insensitively).
#[derive(Debug, Default)]
struct Diff {
    lost: Vec<(String, String)>,
    added: Vec<(String, String)>,
    changed: Vec<(String, String, String)>,
}

fn settings(
    file: &Path,
    ignore: &[String],
) -> Result<BTreeMap<String, (String, String)>, StepError> {
    let doc = load_doc(file)?;
    let mut out = BTreeMap::new();
    for e in doc
        .entries()
        .iter()
        .filter(|e| !ignore.iter().any(|i| i.eq_ignore_ascii_case(&e.key)))
    {
        out.insert(
            e.key.to_ascii_lowercase(),
            (e.key.clone(), e.value.clone().unwrap_or_default()),
        );
    }
    Ok(out)
}

fn diff(
    old: &BTreeMap<String, (String, String)>,
    new: &BTreeMap<String, (String, String)>,
) -> Diff {
    let mut d = Diff::default();
    for (lk, (k, v)) in old {
        match new.get(lk) {
            None => d.lost.push((k.clone(), v.clone())),
            Some((_, nv)) if nv != v => d.changed.push((k.clone(), v.clone(), nv.clone())),
            Some(_) => {}
        }
    }
    for (lk, (k, v)) in new {
        if !old.contains_key(lk) {
            d.added.push((k.clone(), v.clone()));
        }
    }
    d
}

fn table(d: &Diff) -> String {
    let mut rows: Vec<[String; 4]> =
        vec![["change".into(), "key".into(), "backup".into(), "new".into()]];
    for (k, v) in &d.lost {
        rows.push(["lost".into(), k.clone(), shown_value(k, v), "-".into()]);
    }
    for (k, v) in &d.added {
        rows.push(["added".into(), k.clone(), "-".into(), shown_value(k, v)]);
    }
    for (k, o, n) in &d.changed {
        rows.push([
            "changed".into(),
            k.clone(),
            shown_value(k, o),
            shown_value(k, n),
        ]);
    }
    if rows.len() == 1 {
        return "no differences\n".into();
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            out.push_str(cell);
            if i < 3 {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

fn keys<T>(items: &[T], key: impl Fn(&T) -> &str) -> String {
    items.iter().map(key).collect::<Vec<_>>().join(",")
}

impl Compare {
    fn diff(&self) -> Result<Diff, StepError> {
        Ok(diff(
            &settings(&self.p.backup, &self.p.ignore)?,
            &settings(&self.p.file, &self.p.ignore)?,
        ))
    }

    /// Whether this run is the answer to this step's own pause.
    fn approved_pause(ctx: &dyn StepContext) -> bool {
        ctx.approved()
            && ctx.resume_from().is_some_and(|c| {
                super::decode_lines(&c).get("paused").map(String::as_str) == Some(PAUSED_MARK)
            })
    }

    fn pause_reason(&self, d: &Diff) -> String {
        let mut r = format!(
            "{}: the installer changed {} value(s) compared with the backup {}:\n",
            self.p.file.display(),
            d.changed.len(),
            self.p.backup.display()
        );
        for (k, o, n) in &d.changed {
            r.push_str(&format!(
                "  {k}: backup {} -> new {}\n",
                shown_value(k, o),
                shown_value(k, n)
            ));
        }
        r.push_str(&format!(
            "Approving keeps what {} holds then: the new values, unless you set old ones in the file first. \
             To decide in the plan instead: changed = \"keep-old\" or \"keep-new\".",
            self.p.file.display()
        ));
        r
    }
}

#[async_trait::async_trait]
impl Step for Compare {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        crate::preflight::files::check_xml_config_for(
            ctx,
            &self.p.file,
            "the settings file the step compares",
        )
    }
    fn resources(&self) -> Vec<crate::Resource> {
        // Carry-over writes the new file; report mode only reads both.
        vec![crate::Resource::file(&self.p.file)]
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "compare {} with {} ({})",
            self.p.file.display(),
            self.p.backup.display(),
            match self.p.mode {
                Mode::Report => "report differences, change nothing",
                Mode::Fail => "fail if a key was lost",
                Mode::CarryOver => "copy lost keys into the new file",
            }
        )];
        if let Some(c) = self.changed {
            lines.push(format!(
                "  values the installer changed: {}",
                match c {
                    Changed::Pause =>
                        "wait for an operator, listing each key with both values (approve = keep the file as it is then)",
                    Changed::KeepOld => "put the backup's values back",
                    Changed::KeepNew => "keep the new values (reported)",
                }
            ));
        }
        if !self.p.ignore.is_empty() {
            lines.push(format!("  not compared: {}", self.p.ignore.join(", ")));
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let d = self.diff()?;
        ctx.output(&format!(
            "{} compared with {}:\n{}",
            self.p.file.display(),
            self.p.backup.display(),
            table(&d)
        ));
        let mut outputs = Outputs::new();
        outputs.insert("lost".into(), keys(&d.lost, |x| &x.0));
        outputs.insert("added".into(), keys(&d.added, |x| &x.0));
        outputs.insert("changed".into(), keys(&d.changed, |x| &x.0));
        for k in ["carried_over", "kept_old", "kept_new", "backup_of_file"] {
            outputs.insert(k.into(), String::new());
        }
        let Some(policy) = self.changed else {
            return Ok(StepOutcome::with_outputs(outputs));
        };
        if self.p.mode == Mode::Fail && !d.lost.is_empty() {
            return Err(StepError::fatal(format!(
                "{} lost {} setting(s) present in {}: {} (use mode = \"carry_over\" \
                 to copy them over, or set them by hand)",
                self.p.file.display(),
                d.lost.len(),
                self.p.backup.display(),
                keys(&d.lost, |x| &x.0)
            )));
        }
        if policy == Changed::Pause && !d.changed.is_empty() && !Self::approved_pause(ctx) {
            ctx.checkpoint(super::encode_lines(&[("paused", PAUSED_MARK.into())]), 0, 1)
                .await?;
            return Err(StepError::WaitForOperator {
                reason: self.pause_reason(&d),
            });
        }
        let mut set: Vec<(String, String)> = Vec::new();
        if self.p.mode == Mode::CarryOver {
            set.extend(d.lost.iter().cloned());
            outputs.insert("carried_over".into(), keys(&d.lost, |x| &x.0));
        }
        match policy {
            Changed::KeepOld => {
                set.extend(d.changed.iter().map(|(k, o, _)| (k.clone(), o.clone())));
                outputs.insert("kept_old".into(), keys(&d.changed, |x| &x.0));
            }
            Changed::KeepNew | Changed::Pause => {
                if policy == Changed::Pause && !d.changed.is_empty() {
                    ctx.output("approved by an operator: the file keeps the values it holds now\n");
                }
                outputs.insert("kept_new".into(), keys(&d.changed, |x| &x.0));
            }
        }
        if !set.is_empty() {
            let edit = AppSettingsEdit {
                file: self.p.file.clone(),
                set,
                remove: Vec::new(),
            };
            let earlier = ctx
                .resume_from()
                .and_then(|c| super::decode_lines(&c).get("backup").cloned())
                .map(PathBuf::from);
            let applied = edit
                .apply(ctx, &ctx.work_dir(), earlier.clone(), true)
                .await?;
            outputs.insert(
                "backup_of_file".into(),
                applied
                    .backup
                    .or(earlier)
                    .map(|b| b.display().to_string())
                    .unwrap_or_default(),
            );
        }
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        self.p.mode == Mode::CarryOver || self.changed == Some(Changed::KeepOld)
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        if let Some(b) = ctx
            .recorded_outputs()
            .get("backup_of_file")
            .filter(|b| !b.is_empty())
        {
            restore(&self.p.file, Path::new(b))?;
            ctx.output(&format!("restored {} from {b}\n", self.p.file.display()));
        }
        Ok(())
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let keep_old = self.changed == Some(Changed::KeepOld);
        if self.p.mode != Mode::CarryOver && !keep_old {
            return Ok(Probe::Unknown);
        }
        let d = self.diff()?;
        let mut differs = Vec::new();
        if self.p.mode == Mode::CarryOver && !d.lost.is_empty() {
            differs.push(format!("lost keys: {}", keys(&d.lost, |x| &x.0)));
        }
        if keep_old && !d.changed.is_empty() {
            differs.push(format!(
                "values differ from the backup: {}",
                keys(&d.changed, |x| &x.0)
            ));
        }
        Ok(if differs.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(differs.join("; "))
        })
    }
}
