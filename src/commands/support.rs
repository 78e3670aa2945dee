//! `upshift export`, `import`, `replay`, `report` and `diff`: the support
//! tools of [`crate::support`], written to files and printed.

use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::app::Workspace;
use crate::error::{Error, Result, code};
use crate::report::log_line;
use crate::state::RunState;
use crate::support::export::{build, import as import_events, read_file, resolvable_secrets};
use crate::support::replay::{explain, explain_text, state_at, view, view_text};
use crate::support::{Loaded, Origin, diff::diff as diff_runs, diff::diff_text, report_html};

use super::{print_doc, write_output};

/// Reads a run for a support tool; warns on stderr when the journal is
/// damaged (the intact events are still shown).
fn load(source: &str, ws: &Workspace) -> Result<Loaded> {
    let loaded = crate::support::load(source, ws)?;
    if let (Origin::Journal(_), Some(d)) = (&loaded.origin, &loaded.damage) {
        eprintln!(
            "warning: {d}\n  showing the {} intact events before the damage",
            loaded.events.len()
        );
    }
    Ok(loaded)
}

/// `upshift export RUN [-o FILE]`.
pub fn export(ws: &Workspace, run: &str, output: Option<PathBuf>) -> Result<u8> {
    let loaded: Loaded = load(run, ws)?;
    let Origin::Journal(dir) = &loaded.origin else {
        return Err(Error::usage(format!(
            "{run} is already an export file; export reads a run from a journal"
        )));
    };
    let store = Workspace::new(dir)
        .open_reader()
        .map(|j| j.kind())
        .unwrap_or("redb");
    let state = RunState::from_events(&loaded.events);
    let (secrets, notes) = resolvable_secrets(&state);
    for n in &notes {
        eprintln!("note: {n}");
    }
    let bytes = build(&loaded.events, loaded.damage.clone(), store, &secrets)?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("upshift-{}.export", loaded.run)));
    write_output(&out, &bytes)?;
    eprintln!(
        "exported run {} ({} events, plan \"{}\"; checked {} secret value(s)) to {} ({} bytes)\n  support reads it with: upshift replay {} --explain; upshift report {} -o report.html",
        loaded.run,
        loaded.events.len(),
        state.plan_name,
        secrets.len(),
        out.display(),
        bytes.len(),
        out.display(),
        out.display()
    );
    println!("{}", out.display());
    Ok(code::OK)
}

/// `upshift import FILE [--journal DIR]`.
pub fn import(ws: &Workspace, file: &Path) -> Result<u8> {
    let (manifest, events) = read_file(file)?;
    let mut j = ws.open()?;
    let fresh = import_events(&mut j, &events)?;
    let run = &manifest.run;
    let fp = &manifest.fingerprint;
    let dir = ws.dir();
    eprintln!(
        "{} run {run} ({} events, plan \"{}\") from {} (exported {} on {} by {}, upshift {}) into {}",
        if fresh {
            "imported"
        } else {
            "already imported:"
        },
        events.len(),
        manifest.plan_name,
        file.display(),
        manifest.exported_at,
        fp.exported_on,
        fp.exported_by,
        fp.upshift_version,
        dir.display()
    );
    if let Some(d) = &manifest.damaged {
        eprintln!("note: the customer's journal was damaged after the last event: {d}");
    }
    eprintln!(
        "  look at it with: upshift replay {run} --journal {d} --explain; upshift status {run} --journal {d}\n  do not `upshift resume` it here: that would run the customer's steps on this machine",
        d = dir.display()
    );
    println!("{run}");
    Ok(code::OK)
}

/// `upshift replay FILE|RUN [--at SEQ] [--explain] [--json]`.
pub fn replay(
    ws: &Workspace,
    source: &str,
    at: Option<u64>,
    explain_next: bool,
    json: bool,
) -> Result<u8> {
    let loaded: Loaded = load(source, ws)?;
    let events = &loaded.events;
    let Some(last) = events.last() else {
        return Err(Error::failed("the run has no events"));
    };
    let full = RunState::from_events(events);
    let order = crate::support::pinned_plan(&full)
        .map(|p| p.order)
        .unwrap_or_default();
    if explain_next {
        if at.is_some() {
            return Err(Error::usage(
                "--explain works from the last event; give --at or --explain, not both",
            ));
        }
        print_doc(&explain(events, Utc::now()), json, explain_text);
        return Ok(code::OK);
    }
    let v = match at {
        Some(seq) => state_at(events, seq).ok_or_else(|| {
            Error::usage(format!(
                "--at {seq}: the run has events 0..={} (from {})",
                last.seq,
                loaded.origin.describe()
            ))
        })?,
        None => view(last, full),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serializable")
        );
        return Ok(code::OK);
    }
    if at.is_none() {
        // The whole story first, then where it ended.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for e in events {
            if writeln!(out, "{}", log_line(e)).is_err() {
                return Ok(code::OK);
            }
        }
        let _ = writeln!(out);
    }
    print!("{}", view_text(&v, &order));
    if let Some(d) = &loaded.damage {
        println!("\nnote: the journal is damaged after seq {}: {d}", last.seq);
    }
    if at.is_none() {
        println!(
            "\n(replayed {} events from {}; `--at SEQ` shows any earlier point, `--explain` what resume would do)",
            events.len(),
            loaded.origin.describe()
        );
    }
    Ok(code::OK)
}

/// `upshift report RUN|FILE -o report.html [--preflight FILE.json]`.
pub fn report(ws: &Workspace, source: &str, output: &Path, preflight: Option<&Path>) -> Result<u8> {
    let pf = preflight
        .map(crate::preflight::Report::read_json)
        .transpose()?;
    let loaded = load(source, ws)?;
    let section = pf.as_ref().map(crate::preflight::html::section);
    let html = report_html::render_with(
        &loaded,
        section.as_deref().map(|html| report_html::Section {
            css: crate::preflight::html::SECTION_CSS,
            html,
        }),
    )?;
    write_output(output, html.as_bytes())?;
    eprintln!(
        "report of run {} ({} events) written to {} ({} KiB); open it in any browser, offline",
        loaded.run,
        loaded.events.len(),
        output.display(),
        html.len() / 1024
    );
    println!("{}", output.display());
    Ok(code::OK)
}

/// `upshift diff A B [--json]`.
pub fn diff(ws: &Workspace, a: &str, b: &str, json: bool) -> Result<u8> {
    let la = load(a, ws)?;
    let lb = load(b, ws)?;
    print_doc(&diff_runs(&la, &lb), json, diff_text);
    Ok(code::OK)
}
