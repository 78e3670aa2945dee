//! `config.appsettings`: sets or removes `<appSettings><add key value/>`
//! entries of a .NET config file, byte-exact everywhere else (see
//! [`super::xml`]).
//!
//! Parameters: `file`, `set` (table key = value; strings, booleans and
//! numbers are written as text), `remove` (list of keys). Outputs: `file`,
//! `changed` (`true`/`false`), `backup` (the saved original, empty when
//! nothing changed), `changes` (count).
//!
//! Reconciles: the file is read and compared first; nothing is written when
//! every key already has its value. Before writing, the original is copied
//! to the step's work folder and the copy's path checkpointed, so an attempt
//! that crashed after writing reuses the first copy (the true original) when
//! it runs again. Compensation puts the saved original back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::xml::{Change, Doc};
use super::{atomic_write, decode_lines, encode_lines, read_file, save_copy, shown_value};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `config.appsettings` kind.
pub const KIND: KindFn = KindFn {
    name: "config.appsettings",
    summary: "set/remove <appSettings> keys of a .NET config file, byte-exact elsewhere",
    build,
    local_paths: &[],
};

/// A setting's value: text, or a boolean/number written as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingValue(pub String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SettingValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, boolean or number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    file: PathBuf,
    #[serde(default)]
    set: BTreeMap<String, SettingValue>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The edit itself, shared with `config.compare` (carry over) and
/// `ich.cleanup_conferences`.
#[derive(Debug, Clone)]
pub(crate) struct AppSettingsEdit {
    pub file: PathBuf,
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// What [`AppSettingsEdit::apply`] did.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub changes: Vec<Change>,
    pub backup: Option<PathBuf>,
}

impl AppSettingsEdit {
    pub fn check(&self) -> Result<(), ParamError> {
        if self.set.is_empty() && self.remove.is_empty() {
            return Err(
                ParamError::field("set", "nothing to do: `set` and `remove` are empty")
                    .hint("e.g. set = { CleanupConferences = \"false\" }"),
            );
        }
        for (k, v) in &self.set {
            if k.trim().is_empty() {
                return Err(ParamError::field("set", "a key in `set` is empty"));
            }
            super::xml::check_value(k)
                .and_then(|()| super::xml::check_value(v))
                .map_err(|m| ParamError::field("set", format!("`{k}`: {m}")))?;
            if self.remove.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                return Err(ParamError::field(
                    "remove",
                    format!("`{k}` is both in `set` and in `remove`"),
                ));
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (k, v) in &self.set {
            lines.push(format!(
                "{}: set appSettings `{k}` = {}",
                self.file.display(),
                shown_value(k, v)
            ));
        }
        for k in &self.remove {
            lines.push(format!("{}: remove appSettings `{k}`", self.file.display()));
        }
        lines
    }

    pub fn load(&self) -> Result<Doc, StepError> {
        load_doc(&self.file)
    }

    pub fn probe(&self) -> Result<Probe, StepError> {
        let doc = self.load()?;
        let diffs = doc.differences(&self.set, &self.remove);
        Ok(if diffs.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(format!("{}: {}", self.file.display(), diffs.join("; ")))
        })
    }

    /// Applies the edit. `backup_dir` receives a copy of the original
    /// before the first byte changes, unless `reuse_backup` names an earlier
    /// copy (from a crashed attempt); `before_write` runs after the copy is
    /// made; with `checkpoint_backup`, its path is checkpointed (as
    /// `backup=<path>`) before the file is written.
    pub async fn apply(
        &self,
        ctx: &dyn StepContext,
        backup_dir: &Path,
        reuse_backup: Option<PathBuf>,
        checkpoint_backup: bool,
    ) -> Result<Applied, StepError> {
        let doc = self.load()?;
        let edited = doc
            .edit(&self.set, &self.remove)
            .map_err(|e| StepError::fatal(format!("{}: {e}", self.file.display())))?;
        for c in &edited.changes {
            ctx.output(&format!("{}: {}\n", self.file.display(), show_change(c)));
        }
        if edited.changes.is_empty() {
            ctx.output(&format!(
                "{}: every key already has its value; nothing to write\n",
                self.file.display()
            ));
            return Ok(Applied {
                changes: Vec::new(),
                backup: None,
            });
        }
        let backup = match reuse_backup.filter(|p| p.is_file()) {
            Some(p) => p,
            None => save_copy(&self.file, backup_dir, "orig")?,
        };
        if checkpoint_backup {
            let data = encode_lines(&[("backup", backup.display().to_string())]);
            ctx.checkpoint(data, 0, 1).await?;
        }
        atomic_write(&self.file, &edited.bytes)?;
        // Read it back: the file must now hold exactly what was meant.
        let again = self.load()?;
        let diffs = again.differences(&self.set, &self.remove);
        if !diffs.is_empty() {
            return Err(StepError::fatal(format!(
                "{}: after writing, {}",
                self.file.display(),
                diffs.join("; ")
            )));
        }
        Ok(Applied {
            changes: edited.changes,
            backup: Some(backup),
        })
    }
}

/// Reads and parses a config file; errors name the path and line.
pub(crate) fn load_doc(file: &Path) -> Result<Doc, StepError> {
    let bytes = read_file(file)?;
    Doc::parse(bytes).map_err(|e| {
        StepError::fatal(format!(
            "{}:{}: not well-formed XML: {}",
            file.display(),
            e.line,
            e.message
        ))
    })
}

/// One line describing a change (secrets hidden).
pub(crate) fn show_change(c: &Change) -> String {
    match c {
        Change::Set { key, old, new } => format!(
            "set `{key}`: {} -> {}",
            old.as_deref()
                .map_or("(no value)".to_string(), |o| shown_value(key, o)),
            shown_value(key, new)
        ),
        Change::Add { key, value } => format!("add `{key}` = {}", shown_value(key, value)),
        Change::Remove { key, old } => format!(
            "remove `{key}` (was {})",
            old.as_deref()
                .map_or("(no value)".to_string(), |o| shown_value(key, o))
        ),
    }
}

struct ConfigAppSettings {
    edit: AppSettingsEdit,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let edit = AppSettingsEdit {
        file: p.file,
        set: p.set.into_iter().map(|(k, v)| (k, v.0)).collect(),
        remove: p.remove,
    };
    edit.check()?;
    Ok(Box::new(ConfigAppSettings { edit }))
}

/// Restores `file` from `backup` (atomic); a no-op when they are equal.
pub(crate) fn restore(file: &Path, backup: &Path) -> Result<bool, StepError> {
    let saved = read_file(backup)?;
    if std::fs::read(file).ok().as_deref() == Some(&saved[..]) {
        return Ok(false);
    }
    atomic_write(file, &saved)?;
    Ok(true)
}

#[async_trait::async_trait]
impl Step for ConfigAppSettings {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        crate::preflight::files::check_xml_config_for(
            ctx,
            &self.edit.file,
            "the settings file the step edits",
        )
    }
    fn resources(&self) -> Vec<crate::Resource> {
        vec![crate::Resource::file(&self.edit.file)]
    }
    fn describe(&self) -> Vec<String> {
        self.edit.describe()
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let earlier = ctx
            .resume_from()
            .map(|d| decode_lines(&d))
            .and_then(|m| m.get("backup").cloned())
            .filter(|b| !b.is_empty())
            .map(PathBuf::from);
        let applied = self
            .edit
            .apply(ctx, &ctx.work_dir(), earlier.clone(), true)
            .await?;
        // A crashed attempt that already wrote the file leaves nothing to
        // change now; its backup is still the original.
        let backup = applied.backup.or(earlier);
        let mut outputs = Outputs::new();
        outputs.insert("file".into(), self.edit.file.display().to_string());
        outputs.insert("changed".into(), backup.is_some().to_string());
        outputs.insert(
            "backup".into(),
            backup.map(|b| b.display().to_string()).unwrap_or_default(),
        );
        outputs.insert("changes".into(), applied.changes.len().to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        let recorded = ctx.recorded_outputs();
        let backup = recorded
            .get("backup")
            .cloned()
            .or_else(|| {
                ctx.resume_from()
                    .and_then(|d| decode_lines(&d).get("backup").cloned())
            })
            .filter(|b| !b.is_empty());
        let Some(backup) = backup else {
            ctx.output("nothing was changed; nothing to restore\n");
            return Ok(());
        };
        if restore(&self.edit.file, Path::new(&backup))? {
            ctx.output(&format!(
                "restored {} from {backup}\n",
                self.edit.file.display()
            ));
        } else {
            ctx.output(&format!(
                "{} already equals {backup}\n",
                self.edit.file.display()
            ));
        }
        Ok(())
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        self.edit.probe()
    }
}
