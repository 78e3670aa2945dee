//! `config.compare`: compares a newly installed `AppSettings.config` with
//! the copy saved at uninstall, so that no setting is silently lost (the
//! manual's "compare the new AppSettings.config with the backup copy").
//!
//! Parameters: `file` (the new file), `backup` (the saved copy), `mode` =
//! `"report"` (default) | `"fail"` (fail when a key was lost) |
//! `"carry_over"` (copy lost keys into the new file, by the same splicing
//! code as `config.appsettings`). Outputs: `lost`, `added`, `changed`
//! (comma lists of keys), `carried_over` (comma list), `backup_of_file` (the
//! copy of `file` taken before carrying over, empty otherwise). The table of
//! differences goes to the step's output. Compensation (carry_over only):
//! restores `file` from `backup_of_file`.

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    file: PathBuf,
    backup: PathBuf,
    #[serde(default = "report")]
    mode: Mode,
}

struct Compare {
    p: Params,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    Ok(Box::new(Compare { p }))
}

/// The differences between two sets of settings (as .NET reads them: the
/// last `<add>` of a key wins; keys compared case-insensitively).
#[derive(Debug, Default)]
struct Diff {
    lost: Vec<(String, String)>,
    added: Vec<(String, String)>,
    changed: Vec<(String, String, String)>,
}

fn settings(file: &Path) -> Result<BTreeMap<String, (String, String)>, StepError> {
    let doc = load_doc(file)?;
    let mut out = BTreeMap::new();
    for e in doc.entries() {
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

#[async_trait::async_trait]
impl Step for Compare {
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "compare {} with {} ({})",
            self.p.file.display(),
            self.p.backup.display(),
            match self.p.mode {
                Mode::Report => "report differences",
                Mode::Fail => "fail if a key was lost",
                Mode::CarryOver => "copy lost keys into the new file",
            }
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let old = settings(&self.p.backup)?;
        let new = settings(&self.p.file)?;
        let d = diff(&old, &new);
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
        outputs.insert("carried_over".into(), String::new());
        outputs.insert("backup_of_file".into(), String::new());
        match self.p.mode {
            Mode::Report => {}
            Mode::Fail if !d.lost.is_empty() => {
                return Err(StepError::fatal(format!(
                    "{} lost {} setting(s) present in {}: {} (use mode = \"carry_over\" \
                     to copy them over, or set them by hand)",
                    self.p.file.display(),
                    d.lost.len(),
                    self.p.backup.display(),
                    keys(&d.lost, |x| &x.0)
                )));
            }
            Mode::Fail => {}
            Mode::CarryOver if !d.lost.is_empty() => {
                let edit = AppSettingsEdit {
                    file: self.p.file.clone(),
                    set: d.lost.clone(),
                    remove: Vec::new(),
                };
                let earlier = ctx
                    .resume_from()
                    .and_then(|c| super::decode_lines(&c).get("backup").cloned())
                    .map(PathBuf::from);
                let applied = edit.apply(ctx, &ctx.work_dir(), earlier, true).await?;
                outputs.insert("carried_over".into(), keys(&d.lost, |x| &x.0));
                outputs.insert(
                    "backup_of_file".into(),
                    applied
                        .backup
                        .map(|b| b.display().to_string())
                        .unwrap_or_default(),
                );
            }
            Mode::CarryOver => {}
        }
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        self.p.mode == Mode::CarryOver
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
        if self.p.mode != Mode::CarryOver {
            return Ok(Probe::Unknown);
        }
        let d = diff(&settings(&self.p.backup)?, &settings(&self.p.file)?);
        Ok(if d.lost.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(format!("lost keys: {}", keys(&d.lost, |x| &x.0)))
        })
    }
}
