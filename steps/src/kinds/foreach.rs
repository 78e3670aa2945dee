//! `foreach`: a long per-item loop (e.g. ~20 s per conference), one durable
//! checkpoint per finished item, so a crash repeats only the items that were
//! in flight.
//!
//! Parameters: `items` (list) or `items_file` (one item per line; blank
//! lines and lines starting with `#` are ignored; read when the step starts),
//! then a `process` body: `program`, `args`, `env`, `cwd`, `ok_exit_codes`,
//! in which `${item}` and `${item_index}` are replaced per item, and
//! `concurrency` (default 1, at most 64). Outputs: `count`.
//!
//! Checkpoint: `v1;n=<count>;h=<fnv64 of the list>;done=<ranges>`, text so
//! that a replayed journal shows it. Resuming against a different item list
//! fails instead of skipping the wrong items.

use std::collections::BTreeSet;
use std::path::PathBuf;

use futures_util::StreamExt;
use serde::Deserialize;

use super::KindFn;
use super::process::Params as Body;
use crate::child::{self, ChildSpec};
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `foreach` kind.
pub const KIND: KindFn = KindFn {
    name: "foreach",
    summary: "run a command once per item (items or items_file), one checkpoint per item",
    build,
    local_paths: &[
        crate::LocalPath::any("items_file", false),
        crate::LocalPath::any("cwd", true),
    ],
};

/// Upper bound on parallel items.
const CONCURRENCY_MAX: usize = 64;
/// Upper bound on items (a guard against a wrong file).
const ITEMS_MAX: usize = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    items: Option<Vec<String>>,
    items_file: Option<PathBuf>,
    #[serde(default = "one")]
    concurrency: usize,
    // The body: the same fields as `process` (serde cannot combine
    // `flatten` with `deny_unknown_fields`, so they are listed again).
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    #[serde(default = "zero")]
    ok_exit_codes: Vec<i32>,
    #[serde(default)]
    transient_exit_codes: Vec<i32>,
}

fn zero() -> Vec<i32> {
    vec![0]
}

fn one() -> usize {
    1
}

struct Foreach {
    items: Option<Vec<String>>,
    items_file: Option<PathBuf>,
    concurrency: usize,
    body: Body,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let body = Body {
        program: p.program,
        args: p.args,
        env: p.env,
        cwd: p.cwd,
        ok_exit_codes: p.ok_exit_codes,
        reboot_exit_codes: Vec::new(),
        transient_exit_codes: p.transient_exit_codes,
    };
    body.check()?;
    match (&p.items, &p.items_file) {
        (Some(_), Some(_)) => {
            return Err(ParamError::field(
                "items_file",
                "give `items` or `items_file`, not both",
            ));
        }
        (None, None) => {
            return Err(ParamError::field("items", "missing field `items`")
                .hint("give `items = [...]` or `items_file = \"path\"` (one item per line)"));
        }
        _ => {}
    }
    if p.concurrency == 0 || p.concurrency > CONCURRENCY_MAX {
        return Err(ParamError::field(
            "concurrency",
            format!(
                "`concurrency` must be 1..={CONCURRENCY_MAX}, not {}",
                p.concurrency
            ),
        ));
    }
    Ok(Box::new(Foreach {
        items: p.items,
        items_file: p.items_file,
        concurrency: p.concurrency,
        body,
    }))
}

fn substitute(text: &str, item: &str, index: usize) -> String {
    text.replace("${item}", item)
        .replace("${item_index}", &index.to_string())
}

fn item_spec(body: &ChildSpec, item: &str, index: usize) -> ChildSpec {
    ChildSpec {
        program: substitute(&body.program, item, index),
        args: body
            .args
            .iter()
            .map(|a| substitute(a, item, index))
            .collect(),
        env: body
            .env
            .iter()
            .map(|(k, v)| (k.clone(), substitute(v, item, index)))
            .collect(),
        cwd: body.cwd.clone(),
        raw_command_line: body.raw_command_line.clone(),
    }
}

/// FNV-1a, 64-bit: a stable fingerprint of the item list.
fn fingerprint(items: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for it in items {
        for b in it.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Encodes the done set as ranges: `0-4,7,9-10`.
fn encode_ranges(done: &BTreeSet<usize>) -> String {
    let mut out = Vec::new();
    let mut iter = done.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn decode_ranges(text: &str) -> Option<BTreeSet<usize>> {
    let mut done = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > ITEMS_MAX {
                    return None;
                }
                done.extend(a..=b);
            }
            None => {
                done.insert(part.parse().ok()?);
            }
        }
    }
    Some(done)
}

fn encode_checkpoint(items: &[String], done: &BTreeSet<usize>) -> Vec<u8> {
    format!(
        "v1;n={};h={:016x};done={}",
        items.len(),
        fingerprint(items),
        encode_ranges(done)
    )
    .into_bytes()
}

fn decode_checkpoint(items: &[String], data: &[u8]) -> Result<BTreeSet<usize>, StepError> {
    let text = String::from_utf8_lossy(data);
    let bad = || StepError::fatal(format!("foreach checkpoint `{text}` is not readable"));
    let mut n = None;
    let mut h = None;
    let mut done = None;
    for part in text.split(';') {
        if let Some(v) = part.strip_prefix("n=") {
            n = v.parse::<usize>().ok();
        } else if let Some(v) = part.strip_prefix("h=") {
            h = u64::from_str_radix(v, 16).ok();
        } else if let Some(v) = part.strip_prefix("done=") {
            done = decode_ranges(v);
        }
    }
    let (n, h, done) = (
        n.ok_or_else(bad)?,
        h.ok_or_else(bad)?,
        done.ok_or_else(bad)?,
    );
    if n != items.len() || h != fingerprint(items) {
        return Err(StepError::fatal(format!(
            "the item list changed since the last checkpoint ({n} items then, {} now): \
             resuming would skip the wrong items; restore the list, or `upshift retry` \
             after `upshift skip` if the work is really done",
            items.len()
        )));
    }
    if done.iter().any(|&i| i >= n) {
        return Err(bad());
    }
    Ok(done)
}

impl Foreach {
    fn load_items(&self) -> Result<Vec<String>, StepError> {
        let items = match (&self.items, &self.items_file) {
            (Some(items), _) => items.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StepError::fatal(format!("cannot read items_file {}: {e}", path.display()))
                })?;
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        if items.len() > ITEMS_MAX {
            return Err(StepError::fatal(format!(
                "{} items is more than the limit of {ITEMS_MAX}",
                items.len()
            )));
        }
        Ok(items)
    }
}

#[async_trait::async_trait]
impl Step for Foreach {
    fn describe(&self) -> Vec<String> {
        let source = match (&self.items, &self.items_file) {
            (Some(items), _) => format!("{} items", items.len()),
            (_, Some(f)) => format!("each line of {}", f.display()),
            _ => String::new(),
        };
        vec![format!(
            "for {source} ({} at a time): {}",
            self.concurrency,
            self.body.spec().display()
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let items = self.load_items()?;
        let total = items.len();
        let mut done = match ctx.resume_from() {
            Some(data) => decode_checkpoint(&items, &data)?,
            None => BTreeSet::new(),
        };
        if !done.is_empty() {
            ctx.output(&format!(
                "resuming: {} of {total} items already done\n",
                done.len()
            ));
        }
        let body = self.body.spec();
        let todo: Vec<usize> = (0..total).filter(|i| !done.contains(i)).collect();
        let body_ref = &body;
        let items_ref = &items;
        let mut stream = futures_util::stream::iter(todo.into_iter().map(|i| async move {
            let spec = item_spec(body_ref, &items_ref[i], i);
            let exit = child::run(ctx, &spec).await;
            (i, spec, exit)
        }))
        .buffer_unordered(self.concurrency);
        while let Some((i, spec, exit)) = stream.next().await {
            let exit = exit?;
            self.body.judge(&spec, exit.code).map_err(|e| match e {
                StepError::Failed { message, transient } => StepError::Failed {
                    message: format!("item {i} (`{}`): {message}", items[i]),
                    transient,
                },
                other => other,
            })?;
            done.insert(i);
            ctx.checkpoint(
                encode_checkpoint(&items, &done),
                done.len() as u64,
                total as u64,
            )
            .await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("count".into(), total.to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<usize> = [0, 1, 2, 3, 4, 7, 9, 10].into_iter().collect();
        assert_eq!(encode_ranges(&set), "0-4,7,9-10");
        assert_eq!(decode_ranges("0-4,7,9-10").unwrap(), set);
        assert_eq!(decode_ranges("").unwrap(), BTreeSet::new());
        assert!(decode_ranges("5-2").is_none());
    }

    #[test]
    fn checkpoint_refuses_a_changed_list() {
        let items: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let done: BTreeSet<usize> = [0, 2].into_iter().collect();
        let cp = encode_checkpoint(&items, &done);
        assert_eq!(decode_checkpoint(&items, &cp).unwrap(), done);
        let other: Vec<String> = ["a", "x", "c"].map(String::from).to_vec();
        let err = decode_checkpoint(&other, &cp).unwrap_err();
        assert!(err.to_string().contains("item list changed"), "{err}");
    }

    #[tokio::test]
    async fn runs_each_item_once_and_resumes_after_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        // The same append through the platform's shell: `sh` here, `cmd`
        // on Windows (which writes CRLF, normalised below).
        let (program, args) = if cfg!(windows) {
            (
                "cmd",
                [
                    "/c".to_string(),
                    format!("echo ${{item}}>> {}", marker.display()),
                ],
            )
        } else {
            (
                "sh",
                [
                    "-c".to_string(),
                    format!("echo ${{item}} >> {}", marker.display()),
                ],
            )
        };
        let mut with: toml::Table = toml::from_str(r#"items = ["a", "b", "c", "d"]"#).unwrap();
        with.insert("program".into(), program.into());
        with.insert("args".into(), args.to_vec().into());
        let step = build(&with).unwrap();
        // First attempt "crashes" at the third checkpoint.
        let mut ctx = crate::testing::TestContext::new("loop", dir.path());
        ctx.fail_checkpoint_at = Some(3);
        assert!(step.run(&ctx).await.is_err());
        let cp = ctx.last_checkpoint().unwrap();
        // Second attempt continues from the checkpoint.
        let mut ctx2 = crate::testing::TestContext::new("loop", dir.path());
        ctx2.resume = Some(cp);
        let out = step.run(&ctx2).await.unwrap();
        assert_eq!(out.outputs["count"], "4");
        let lines = std::fs::read_to_string(&marker)
            .unwrap()
            .replace("\r\n", "\n");
        // a, b done once; c ran in the crashed attempt (its checkpoint
        // failed) and again; d once.
        assert_eq!(lines, "a\nb\nc\nc\nd\n");
    }
}
