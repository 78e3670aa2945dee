//! `upshift report`: one self-contained HTML file per run, for support.
//!
//! Everything is inline (CSS, a little JS, SVG); the file loads nothing
//! from anywhere. Sections: a header (plan, site, result, duration,
//! sessions, who decided what), a Gantt chart of every attempt, wait,
//! backoff and compensation (time the engine was not running — pauses,
//! interruptions, reboots — shows as shaded, shortened gaps), the DAG with
//! step states, every failure with its error and output tail, a per-step
//! summary, and the event list with filters.
//!
//! Size: a run may have 100,000+ events, nearly all progress and
//! checkpoint events of `foreach` steps. Those are summarised: per step and
//! type only the first and last [`RAW_KEEP`] are kept raw, the rest counted
//! (one marker row says how many, from which seq to which). The list is
//! embedded as compact JSON and rendered one page at a time by the script,
//! so the browser never lays out more than [`PAGE_ROWS`] rows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use upshift_journal::{Envelope, Event};

use super::timeline::{Session, Span, SpanEnd, SpanKind, sessions, spans, step_totals};
use super::{Loaded, duration_text, html_escape};
use crate::error::Error;
use crate::plan::Plan;
use crate::report::{comp_word, event_line, status_word, step_word};
use crate::state::{CompStatus, RunState, StepStatus};

/// Progress/checkpoint events kept raw at each end, per step and type.
pub const RAW_KEEP: usize = 25;
/// Rows the event list shows per page.
pub const PAGE_ROWS: usize = 200;
/// Lines of output tail shown per failure.
const TAIL_LINES: usize = 40;

/// The event list as embedded: compact rows.
#[derive(Serialize)]
struct EventData {
    steps: Vec<String>,
    types: Vec<&'static str>,
    /// `[seq, ms since the first event, type index, step index or -1, text]`
    rows: Vec<(u64, i64, usize, i64, String)>,
    /// Events summarised away, per step and type.
    omitted: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Progress and checkpoint events in all, per step and type.
    counts: BTreeMap<String, BTreeMap<&'static str, u64>>,
    total: usize,
}

fn summarised(e: &Event) -> bool {
    matches!(e, Event::StepProgress { .. } | Event::StepCheckpoint { .. })
}

fn event_data(events: &[Envelope], t0: DateTime<Utc>) -> EventData {
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for e in events.iter().filter(|e| summarised(&e.event)) {
        *counts
            .entry((e.event.step().unwrap_or("").to_string(), e.event.name()))
            .or_default() += 1;
    }
    let mut steps: Vec<String> = Vec::new();
    let mut step_ix: BTreeMap<String, usize> = BTreeMap::new();
    let mut types: Vec<&'static str> = Vec::new();
    let mut rows = Vec::new();
    let mut omitted: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut rank: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    // (step, type) -> index of its marker row, and the seq range omitted.
    let mut marker: BTreeMap<(String, &'static str), (usize, u64, u64)> = BTreeMap::new();
    for e in events {
        let name = e.event.name();
        let step = e.event.step().map(str::to_string);
        let si = match &step {
            Some(s) => {
                let n = step_ix.len();
                *step_ix.entry(s.clone()).or_insert_with(|| {
                    steps.push(s.clone());
                    n
                }) as i64
            }
            None => -1,
        };
        let ti = match types.iter().position(|t| *t == name) {
            Some(i) => i,
            None => {
                types.push(name);
                types.len() - 1
            }
        };
        let ms = (e.time - t0).num_milliseconds();
        if summarised(&e.event) {
            let k = (step.clone().unwrap_or_default(), name);
            let r = rank.entry(k.clone()).or_default();
            let n = counts[&k];
            let keep = *r < RAW_KEEP || *r + RAW_KEEP >= n;
            *r += 1;
            if !keep {
                *omitted
                    .entry(k.0.clone())
                    .or_default()
                    .entry(name)
                    .or_default() += 1;
                match marker.get_mut(&k) {
                    Some(m) => m.2 = e.seq,
                    None => {
                        rows.push((e.seq, ms, ti, si, String::new()));
                        marker.insert(k, (rows.len() - 1, e.seq, e.seq));
                    }
                }
                continue;
            }
        }
        // The type has a column of its own: drop it from the text.
        let line = event_line(&e.event);
        let text = line
            .strip_prefix(name)
            .map(|t| t.trim_start().to_string())
            .unwrap_or(line);
        rows.push((e.seq, ms, ti, si, text));
    }
    for ((step, name), (row, from, to)) in marker {
        let n = omitted[&step][name];
        rows[row].4 = format!(
            "… {n} {name} events of {step} summarised (seq {from}..={to}); the first and last {RAW_KEEP} are listed"
        );
    }
    let mut per_step: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for ((step, name), n) in counts {
        per_step.entry(step).or_default().insert(name, n as u64);
    }
    EventData {
        steps,
        types,
        rows,
        omitted,
        counts: per_step,
        total: events.len(),
    }
}

/// Maps time to x, shortening the time no engine was running.
struct Scale {
    /// (start, end, x0, x1)
    segments: Vec<(DateTime<Utc>, DateTime<Utc>, f64, f64)>,
}

/// Width of a shortened gap, in pixels.
const GAP_PX: f64 = 44.0;

impl Scale {
    fn new(t0: DateTime<Utc>, t1: DateTime<Utc>, sessions: &[Session], width: f64) -> Scale {
        // Gaps: between sessions, longer than 2% of the run and than 1 s.
        let total_ms = (t1 - t0).num_milliseconds().max(1) as f64;
        let mut cuts: Vec<(DateTime<Utc>, DateTime<Utc>, bool)> = Vec::new();
        let mut cur = t0;
        for w in sessions.windows(2) {
            let (a, b) = (w[0].end, w[1].start);
            let gap = (b - a).num_milliseconds() as f64;
            if gap > 1000.0 && gap > total_ms * 0.02 && a >= cur {
                cuts.push((cur, a, false));
                cuts.push((a, b, true));
                cur = b;
            }
        }
        cuts.push((cur, t1, false));
        let gaps = cuts.iter().filter(|c| c.2).count() as f64;
        let live_ms: f64 = cuts
            .iter()
            .filter(|c| !c.2)
            .map(|c| (c.1 - c.0).num_milliseconds() as f64)
            .sum::<f64>()
            .max(1.0);
        let per_ms = ((width - gaps * GAP_PX).max(width * 0.3)) / live_ms;
        let mut x = 0.0;
        let mut segments = Vec::new();
        for (a, b, gap) in cuts {
            let w = if gap {
                GAP_PX
            } else {
                (b - a).num_milliseconds() as f64 * per_ms
            };
            segments.push((a, b, x, x + w));
            x += w;
        }
        Scale { segments }
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        for (a, b, x0, x1) in &self.segments {
            if t <= *b {
                let span = (*b - *a).num_milliseconds().max(1) as f64;
                let f = ((t - *a).num_milliseconds() as f64 / span).clamp(0.0, 1.0);
                return x0 + f * (x1 - x0);
            }
        }
        self.segments.last().map(|s| s.3).unwrap_or(0.0)
    }

    fn gaps(&self) -> impl Iterator<Item = &(DateTime<Utc>, DateTime<Utc>, f64, f64)> {
        self.segments.iter().filter(|s| s.3 - s.2 == GAP_PX)
    }
}

fn span_class(s: &Span) -> &'static str {
    match (s.kind, s.ended) {
        (SpanKind::Waiting, _) => "wait",
        (SpanKind::RetryWait, _) => "backoff",
        (SpanKind::Compensation, SpanEnd::Failed) => "comp-failed",
        (SpanKind::Compensation, _) => "comp",
        (SpanKind::Attempt, SpanEnd::Succeeded) => "ok",
        (SpanKind::Attempt, SpanEnd::Failed) => "failed",
        (SpanKind::Attempt, SpanEnd::Interrupted) => "interrupted",
        (SpanKind::Attempt, SpanEnd::Waiting) => "ok",
        (SpanKind::Attempt, _) => "open",
    }
}

fn span_title(s: &Span) -> String {
    let what = match s.kind {
        SpanKind::Attempt => format!(
            "attempt {}{}",
            s.attempt,
            if s.from_checkpoint {
                " (from checkpoint)"
            } else {
                ""
            }
        ),
        SpanKind::Compensation => "compensation".into(),
        SpanKind::Waiting => "waiting for an operator".into(),
        SpanKind::RetryWait => "retry backoff".into(),
    };
    format!(
        "{} — {what}: {} from {} (seq {}..{}), {}",
        s.step,
        s.ended.as_str(),
        s.start.format("%H:%M:%S%.3f"),
        s.start_seq,
        s.end_seq,
        duration_text(s.duration())
    )
}

const LABEL_W: f64 = 190.0;
const ROW_H: f64 = 24.0;

fn gantt(
    order: &[String],
    host_of: &BTreeMap<String, String>,
    all_spans: &[Span],
    sess: &[Session],
    events: &[Envelope],
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
) -> String {
    let width = 1000.0;
    let scale = Scale::new(t0, t1, sess, width);
    let top = 34.0;
    let h = top + ROW_H * order.len() as f64 + 26.0;
    let total_w = LABEL_W + width + 20.0;
    let mut s = format!(
        r#"<svg id="gantt" xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h}" viewBox="0 0 {total_w} {h}" role="img" aria-label="timeline of every step attempt">"#
    );
    s.push_str(r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#efe6fb"/><line x1="0" y1="0" x2="0" y2="6" stroke="#8e6cc9" stroke-width="2"/></pattern></defs>"##);
    // Sessions band and the gaps between them.
    for (i, se) in sess.iter().enumerate() {
        let x0 = LABEL_W + scale.x(se.start);
        let x1 = (LABEL_W + scale.x(se.end)).max(x0 + 2.0);
        let _ = write!(
            s,
            r#"<rect class="session" x="{x0:.1}" y="4" width="{:.1}" height="12"><title>engine session {} ({:?}) by {}: {} → {}, ended {}</title></rect>"#,
            x1 - x0,
            i + 1,
            se.began,
            html_escape(&se.who),
            se.start.format("%H:%M:%S"),
            se.end.format("%H:%M:%S"),
            se.ended
        );
    }
    // Row backgrounds first, then the gaps over them, then the bars.
    for i in 0..order.len() {
        let _ = write!(
            s,
            r#"<rect class="rowbg{}" x="0" y="{}" width="{total_w}" height="{ROW_H}"/>"#,
            i % 2,
            top + ROW_H * i as f64
        );
    }
    for (a, b, x0, x1) in scale.gaps() {
        let _ = write!(
            s,
            r#"<rect class="gap" x="{:.1}" y="20" width="{:.1}" height="{:.1}"><title>no engine running for {} ({} → {})</title></rect><text class="gaplabel" x="{:.1}" y="30">⋯ {} ⋯</text>"#,
            LABEL_W + x0,
            x1 - x0,
            h - 40.0,
            duration_text(*b - *a),
            a.format("%H:%M:%S"),
            b.format("%H:%M:%S"),
            LABEL_W + (x0 + x1) / 2.0,
            html_escape(&duration_text(*b - *a))
        );
    }
    for (i, id) in order.iter().enumerate() {
        let y = top + ROW_H * i as f64;
        let _ = write!(
            s,
            r#"<g class="gantt-row" data-step="{id}"><text class="label" x="6" y="{:.1}">{host}{id}</text>"#,
            y + 16.0,
            id = html_escape(id),
            host = host_of
                .get(id)
                .filter(|h| !id.ends_with(&format!("@{h}")))
                .map(|h| format!("{} · ", html_escape(h)))
                .unwrap_or_default()
        );
        for sp in all_spans.iter().filter(|sp| &sp.step == id) {
            let x0 = LABEL_W + scale.x(sp.start);
            let x1 = (LABEL_W + scale.x(sp.end)).max(x0 + 2.0);
            let (yy, hh) = match sp.kind {
                SpanKind::RetryWait => (y + 10.0, 4.0),
                SpanKind::Compensation => (y + 13.0, 8.0),
                _ => (
                    y + 4.0,
                    if sp.kind == SpanKind::Attempt {
                        9.0
                    } else {
                        16.0
                    },
                ),
            };
            let hh = if sp.kind == SpanKind::Attempt
                && !all_spans
                    .iter()
                    .any(|o| o.step == sp.step && o.kind == SpanKind::Compensation)
            {
                16.0
            } else {
                hh
            };
            let _ = write!(
                s,
                r#"<rect class="bar {}" x="{x0:.1}" y="{yy:.1}" width="{:.1}" height="{hh}" rx="2"><title>{}</title></rect>"#,
                span_class(sp),
                x1 - x0,
                html_escape(&span_title(sp))
            );
            if sp.kind == SpanKind::Attempt && sp.attempt > 1 && x1 - x0 > 14.0 {
                let _ = write!(
                    s,
                    r#"<text class="attempt" x="{:.1}" y="{:.1}">{}</text>"#,
                    x0 + 3.0,
                    yy + 12.0,
                    sp.attempt
                );
            }
        }
        s.push_str("</g>");
    }
    // Reboots and decisions as markers.
    for e in events {
        let (cls, label) = match &e.event {
            Event::RebootRequested { step, .. } => {
                ("reboot", format!("reboot requested by {step}"))
            }
            Event::OperatorDecision {
                decision, actor, ..
            } => (
                "decision",
                format!(
                    "{} by {}@{}",
                    crate::state::describe_decision(decision),
                    actor.user,
                    actor.host
                ),
            ),
            _ => continue,
        };
        let x = LABEL_W + scale.x(e.time);
        let _ = write!(
            s,
            r#"<line class="{cls}" x1="{x:.1}" x2="{x:.1}" y1="18" y2="{:.1}"><title>seq {}: {}</title></line>"#,
            h - 22.0,
            e.seq,
            html_escape(&label)
        );
    }
    let _ = write!(
        s,
        r#"<text class="axis" x="{LABEL_W}" y="{:.1}">{}</text><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text></svg>"#,
        h - 6.0,
        t0.format("%Y-%m-%d %H:%M:%S UTC"),
        LABEL_W + width,
        h - 6.0,
        t1.format("%H:%M:%S UTC")
    );
    s
}

fn state_class(st: &crate::state::StepState) -> &'static str {
    if st.compensation == CompStatus::Done {
        return "s-compensated";
    }
    if st.compensation == CompStatus::Failed {
        return "s-failed";
    }
    match st.status {
        StepStatus::Succeeded => "s-ok",
        StepStatus::Failed => "s-failed",
        StepStatus::Skipped => "s-skipped",
        StepStatus::Running => "s-running",
        StepStatus::Interrupted => "s-interrupted",
        StepStatus::Waiting | StepStatus::RetryWait => "s-waiting",
        StepStatus::Pending => "s-pending",
    }
}

/// Steps in a layer side by side at most; a wider layer wraps.
const DAG_COLUMNS_MAX: usize = 5;

/// The dependency graph, top-down: one band per depth (a step sits below
/// everything it needs), at most [`DAG_COLUMNS_MAX`] steps side by side
/// (wider layers wrap), full step names. The SVG scales to the page width
/// (`width="100%"` over its viewBox), so a plan of 50 steps fits without
/// scrolling sideways.
fn dag(plan: Option<&Plan>, order: &[String], state: &RunState) -> String {
    let Some(plan) = plan else {
        return "<p>The pinned plan does not validate with this upshift: no graph.</p>".into();
    };
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &plan.order {
        let d = plan.steps[id]
            .needs
            .iter()
            .map(|n| depth.get(n.as_str()).copied().unwrap_or(0) + 1)
            .max()
            .unwrap_or(0);
        depth.insert(id, d);
    }
    let mut layers: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for id in order {
        if let Some(d) = depth.get(id.as_str()) {
            layers.entry(*d).or_default().push(id);
        }
    }
    let (nw, nh, gx, gy, band_gap) = (230.0, 44.0, 24.0, 14.0, 34.0);
    let cols = layers
        .values()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .clamp(1, DAG_COLUMNS_MAX) as f64;
    let w = cols * (nw + gx) - gx + 20.0;
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut y = 10.0;
    for ids in layers.values() {
        for (r, row) in ids.chunks(DAG_COLUMNS_MAX).enumerate() {
            // Each row centred.
            let off = (cols - row.len() as f64) * (nw + gx) / 2.0;
            for (i, id) in row.iter().enumerate() {
                pos.insert(id, (10.0 + off + i as f64 * (nw + gx), y));
            }
            y += nh
                + if r + 1 < ids.len().div_ceil(DAG_COLUMNS_MAX) {
                    gy
                } else {
                    band_gap
                };
        }
    }
    let h = y - band_gap + 10.0;
    let mut s = format!(
        r##"<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMin meet" style="max-width:{w}px" role="img" aria-label="dependency graph"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#889"/></marker></defs>"##
    );
    for id in &plan.order {
        let Some((x, y)) = pos.get(id.as_str()) else {
            continue;
        };
        for n in &plan.steps[id].needs {
            if let Some((px, py)) = pos.get(n.as_str()) {
                let (ax, ay, bx, by) = (px + nw / 2.0, py + nh, x + nw / 2.0, *y);
                let bend = ((by - ay) / 2.0).max(12.0);
                let _ = write!(
                    s,
                    r#"<path class="edge" d="M{ax:.1},{ay:.1} C{ax:.1},{:.1} {bx:.1},{:.1} {bx:.1},{by:.1}" marker-end="url(#arrow)"/>"#,
                    ay + bend,
                    by - bend
                );
            }
        }
    }
    for id in order {
        let Some((x, y)) = pos.get(id.as_str()) else {
            continue;
        };
        let st = state.step(id);
        let kind = &plan.steps[id].body.kind;
        let mut word = step_word(&st.status).to_string();
        if st.compensation != CompStatus::None {
            word = format!("{word}, comp. {}", comp_word(&st.compensation));
        }
        // The whole name, squeezed into the box when it is long (never cut).
        let fit = if id.chars().count() > 30 {
            format!(
                r#" textLength="{:.0}" lengthAdjust="spacingAndGlyphs""#,
                nw - 16.0
            )
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"<g class="node {}" data-step="{}"><rect x="{x:.1}" y="{y:.1}" width="{nw}" height="{nh}" rx="6"/><text x="{:.1}" y="{:.1}" class="nid"{fit}>{}</text><text x="{:.1}" y="{:.1}" class="nkind">{} · {}</text><title>{} [{}]: {}, {} attempt(s)</title></g>"#,
            state_class(st),
            html_escape(id),
            x + 8.0,
            y + 18.0,
            html_escape(id),
            x + 8.0,
            y + 35.0,
            html_escape(kind),
            html_escape(&word),
            html_escape(id),
            html_escape(kind),
            html_escape(&word),
            st.attempts
        );
    }
    s.push_str("</svg>");
    s
}

/// A value shown whole: a short one as it is, a long one folded (its start
/// as the summary, the whole value when opened).
fn folded(v: &str) -> String {
    const FOLD_CHARS: usize = 80;
    if v.chars().count() <= FOLD_CHARS && !v.contains('\n') {
        return html_escape(v);
    }
    let head: String = v.chars().take(60).take_while(|c| *c != '\n').collect();
    format!(
        r#"<details class="fold"><summary>{}…</summary><pre>{}</pre></details>"#,
        html_escape(&head),
        html_escape(v)
    )
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].join("\n")
}

fn failures(events: &[Envelope]) -> String {
    let mut s = String::new();
    let mut n = 0;
    for e in events {
        let (what, step, error, out) = match &e.event {
            Event::StepFailed {
                step,
                attempt,
                error,
                output_tail,
                transient,
            } => (
                format!(
                    "attempt {attempt} failed{}",
                    if *transient { " (transient)" } else { "" }
                ),
                step,
                error,
                output_tail,
            ),
            Event::CompensationFailed {
                step,
                error,
                output_tail,
            } => ("compensation failed".to_string(), step, error, output_tail),
            _ => continue,
        };
        n += 1;
        let _ = write!(
            s,
            r#"<div class="failure" data-step="{}"><h3>{} — {what} <span class="muted">seq {} · {}</span></h3><pre class="error">{}</pre>{}</div>"#,
            html_escape(step),
            html_escape(step),
            e.seq,
            e.time.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            html_escape(error),
            if out.trim().is_empty() {
                "<p class=\"muted\">(no output captured)</p>".to_string()
            } else {
                format!(
                    "<details open><summary>output (last {TAIL_LINES} lines)</summary><pre class=\"tail\">{}</pre></details>",
                    html_escape(&tail(out))
                )
            }
        );
    }
    if n == 0 {
        s.push_str("<p>No step or compensation failed.</p>");
    }
    s
}

fn site_of(plan: Option<&Plan>, state: &RunState, hosts: &BTreeSet<String>) -> String {
    if let Some(v) = state.cli_vars.get("site") {
        return v.clone();
    }
    if let Some(toml::Value::String(v)) = plan.and_then(|p| p.vars.get("site")) {
        return v.clone();
    }
    // The site file the run pinned, by its name.
    if let Some((path, _, hash)) = &state.site {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| path.clone());
        return format!("{name} (site file {})", super::short(hash, 12));
    }
    hosts.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Renders the report of a run.
pub fn render(loaded: &Loaded) -> Result<String, Error> {
    render_with(loaded, None)
}

/// A section the run report carries but does not make (the preflight's,
/// `crate::preflight::html::section`): its CSS and its markup, both
/// made safe by their maker (every text in them escaped).
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    /// Rules added to the report's style sheet.
    pub css: &'a str,
    /// The `<section>`, placed after the header.
    pub html: &'a str,
}

/// Renders the report of a run with an extra section after the header
/// (`upshift report --preflight FILE.json`, the demo: preflight journals
/// nothing, so its result is handed in).
pub fn render_with(loaded: &Loaded, extra: Option<Section<'_>>) -> Result<String, Error> {
    let events = &loaded.events;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(Error::failed("the run has no events: nothing to report"));
    };
    let (t0, t1) = (first.time, last.time.max(first.time));
    let state = RunState::from_events(events);
    let plan = super::pinned_plan(&state).ok();
    let mut order: Vec<String> = plan.as_ref().map(|p| p.order.clone()).unwrap_or_default();
    for k in state.steps.keys() {
        if !order.contains(k) {
            order.push(k.clone());
        }
    }
    let all_spans = spans(events);
    let sess = sessions(events);
    let totals = step_totals(&all_spans);
    let mut hosts = BTreeSet::new();
    for e in events {
        if let Event::RunStarted { actor, .. } | Event::RunResumed { actor, .. } = &e.event {
            hosts.insert(actor.host.clone());
        }
    }
    let status = status_word(state.status(false));
    let active = sess
        .iter()
        .fold(chrono::Duration::zero(), |a, s| a + (s.end - s.start));
    let data = event_data(events, t0);
    let mut html = String::with_capacity(64 * 1024 + data.rows.len() * 96);
    let title = format!("upshift report — {} — {}", state.plan_name, loaded.run);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{CSS}{}</style></head><body>",
        html_escape(&title),
        extra.map(|x| x.css).unwrap_or_default()
    );
    // Header.
    let _ = write!(
        html,
        r#"<header><h1>{plan} <span class="result r-{status}">{status}</span></h1><table class="facts"><tr><th>run</th><td><code>{run}</code></td><th>plan hash</th><td><code>{hash}</code></td></tr><tr><th>site</th><td>{site}</td><th>hosts</th><td>{hosts}</td></tr><tr><th>started</th><td>{start}</td><th>last event</th><td>{end}</td></tr><tr><th>duration</th><td>{dur} wall, {active} with an engine running</td><th>events</th><td>{n} (from {origin})</td></tr></table>"#,
        plan = html_escape(&state.plan_name),
        run = loaded.run,
        hash = html_escape(super::short(&state.plan_hash, 16)),
        site = html_escape(&site_of(plan.as_ref(), &state, &hosts)),
        hosts = html_escape(&hosts.iter().cloned().collect::<Vec<_>>().join(", ")),
        start = t0.format("%Y-%m-%d %H:%M:%S UTC"),
        end = t1.format("%Y-%m-%d %H:%M:%S UTC"),
        dur = duration_text(t1 - t0),
        active = duration_text(active),
        n = events.len(),
        origin = html_escape(&loaded.origin.describe()),
    );
    if let Some(p) = &state.paused {
        let _ = write!(
            html,
            r#"<p class="why"><b>paused:</b> {}</p>"#,
            html_escape(p)
        );
    }
    if let Some(d) = &loaded.damage {
        let _ = write!(
            html,
            r#"<p class="why"><b>journal damaged</b> after the last event shown: {}</p>"#,
            html_escape(d)
        );
    }
    if let Some(m) = loaded.manifest() {
        let fp = &m.fingerprint;
        let _ = write!(
            html,
            r#"<p class="muted">exported {} on {} by {} ({} {}{}), upshift {}; engine versions {}</p>"#,
            html_escape(&m.exported_at),
            html_escape(&fp.exported_on),
            html_escape(&fp.exported_by),
            html_escape(&fp.os),
            html_escape(&fp.arch),
            fp.os_release
                .as_ref()
                .map(|r| format!(", {}", html_escape(r)))
                .unwrap_or_default(),
            html_escape(&fp.upshift_version),
            html_escape(&fp.engine_versions.join(", "))
        );
    }
    if let Some(x) = extra {
        html.push_str(x.html);
    }
    html.push_str("<h2>Sessions and decisions</h2><table class=\"list\" id=\"sessions\"><tr><th>#</th><th>began</th><th>by</th><th>upshift</th><th>from</th><th>to</th><th>ended</th></tr>");
    for (i, s) in sess.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{} (seq {})</td><td>{} (seq {})</td><td>{}</td></tr>",
            i + 1,
            s.began,
            html_escape(&s.who),
            html_escape(&s.engine_version),
            s.start.format("%Y-%m-%d %H:%M:%S"),
            s.start_seq,
            s.end.format("%H:%M:%S"),
            s.end_seq,
            s.ended
        );
    }
    html.push_str("</table>");
    if state.decisions.is_empty() {
        html.push_str("<p>No operator decisions.</p>");
    } else {
        html.push_str("<table class=\"list\" id=\"decisions\"><tr><th>when</th><th>who</th><th>decided</th><th>why</th><th>seq</th></tr>");
        for d in &state.decisions {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                d.time.format("%Y-%m-%d %H:%M:%S"),
                html_escape(&d.who),
                html_escape(&d.what),
                html_escape(&d.reason),
                d.seq
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</header>");
    // Timeline.
    html.push_str("<section><h2>Timeline</h2><p class=\"legend\"><span class=\"k ok\"></span>attempt succeeded <span class=\"k failed\"></span>failed <span class=\"k interrupted\"></span>interrupted <span class=\"k open\"></span>running/open <span class=\"k wait\"></span>waiting for an operator <span class=\"k backoff\"></span>retry backoff <span class=\"k comp\"></span>compensation <span class=\"k gapk\"></span>no engine running (shortened) <span class=\"k decisionk\"></span>decision <span class=\"k rebootk\"></span>reboot requested. Hover a bar for details.</p><div class=\"scroll\">");
    // One lane per host: the steps of each remote host together, after the
    // coordinator's, each labelled with its host.
    let host_of: BTreeMap<String, String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepDispatched { step, host, .. } => Some((step.clone(), host.clone())),
            _ => None,
        })
        .collect();
    let mut lanes = order.clone();
    lanes.sort_by_key(|id| host_of.get(id).cloned().unwrap_or_default());
    html.push_str(&gantt(&lanes, &host_of, &all_spans, &sess, events, t0, t1));
    html.push_str("</div></section>");
    // DAG.
    html.push_str("<section><h2>Steps and dependencies</h2><div class=\"dagbox\">");
    html.push_str(&dag(plan.as_ref(), &order, &state));
    html.push_str("</div>");
    html.push_str("<table class=\"list\" id=\"steps\"><tr><th>step</th><th>kind</th><th>state</th><th>attempts</th><th>time in attempts</th><th>progress</th><th>checkpoint/progress events</th><th>outputs</th></tr>");
    for id in &order {
        let st = state.step(id);
        let kind = plan
            .as_ref()
            .and_then(|p| p.steps.get(id))
            .map(|d| d.body.kind.clone())
            .unwrap_or_default();
        let (_, spent) = totals
            .get(id)
            .copied()
            .unwrap_or((0, chrono::Duration::zero()));
        let om = data
            .counts
            .get(id)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let outputs = st
            .outputs
            .iter()
            .map(|(k, v)| format!("{}={}", html_escape(k), folded(v)))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            html,
            r#"<tr class="step-row {}" data-step="{}"><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="small">{}</td></tr>"#,
            state_class(st),
            html_escape(id),
            html_escape(id),
            html_escape(&kind),
            step_word(&st.status),
            if st.compensation != CompStatus::None {
                format!(", compensation {}", comp_word(&st.compensation))
            } else {
                String::new()
            },
            st.attempts,
            duration_text(spent),
            if st.total > 0 {
                format!("{}/{}", st.done, st.total)
            } else {
                String::new()
            },
            om,
            outputs
        );
    }
    html.push_str("</table></section>");
    // Failures.
    html.push_str("<section><h2>Failures</h2>");
    html.push_str(&failures(events));
    html.push_str("</section>");
    // Events.
    let _ = write!(
        html,
        r#"<section><h2>Events</h2><div class="controls"><label>step <select id="f-step"><option value="">all</option></select></label> <label>type <select id="f-type"><option value="">all</option></select></label> <label>text <input id="f-text" type="search" placeholder="contains…"></label> <button id="prev">◀ prev</button> <span id="page"></span> <button id="next">next ▶</button></div><p class="muted" id="count"></p><table class="list" id="events"><thead><tr><th>seq</th><th>time (UTC)</th><th>+</th><th>type</th><th>step</th><th>event</th></tr></thead><tbody id="rows"></tbody></table></section><footer class="muted">Written by upshift {} at {}. Self-contained: no network, no external files.</footer>"#,
        env!("CARGO_PKG_VERSION"),
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let json = serde_json::to_string(&data)
        .expect("serializable")
        // No `<` at all inside the script element: `</script>` and `<!--`
        // cannot end or confuse it. JSON reads `\u003c` back as `<`.
        .replace('<', "\\u003c")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    let _ = write!(
        html,
        r#"<script id="data" type="application/json">{json}</script><script>const T0={};const PAGE={PAGE_ROWS};const FOLD=240;{JS}</script></body></html>"#,
        t0.timestamp_millis()
    );
    Ok(html)
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 24px 40px;color:#1d2330;background:#fbfbfd}
h1{font-size:22px;margin:18px 0 8px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}h3{font-size:14px;margin:10px 0 4px}
code,pre{font-family:ui-monospace,"Cascadia Mono",Consolas,monospace;font-size:12px}
pre{background:#f3f3f7;border:1px solid #e2e2ea;padding:8px;overflow:auto;max-height:360px;white-space:pre-wrap;overflow-wrap:anywhere}
pre.error{background:#fff2f2;border-color:#f3c9c9}
.muted{color:#6b7080}.small{font-size:12px}
.result{font-size:13px;padding:2px 10px;border-radius:12px;vertical-align:middle;color:#fff;background:#7a8091}
.r-succeeded{background:#2e8b57}.r-failed{background:#c0392b}.r-paused{background:#b7791f}.r-interrupted{background:#d35400}.r-rolled_back{background:#5b6bbf}.r-running{background:#2b7bb9}
table.facts th{text-align:left;color:#6b7080;font-weight:normal;padding:2px 12px 2px 0}table.facts td{padding:2px 24px 2px 0}
table.list{border-collapse:collapse;margin:6px 0;font-size:13px}table.list th,table.list td{border-bottom:1px solid #e6e6ee;padding:3px 10px 3px 0;text-align:left;vertical-align:top;overflow-wrap:break-word}table.list td.small{overflow-wrap:anywhere;min-width:16em}
table.list th{color:#6b7080;font-weight:600}
.why{background:#fff8e6;border:1px solid #f0dca8;padding:6px 10px;white-space:pre-wrap;overflow-wrap:anywhere}
.scroll{overflow:auto;max-width:100%;border:1px solid #e6e6ee;background:#fff}
svg text{font-family:system-ui,sans-serif;font-size:12px}
.rowbg0{fill:#fff}.rowbg1{fill:#f6f7fb}.label{fill:#1d2330}.axis{fill:#6b7080;font-size:11px}
.session{fill:#cfe0f5}.gap{fill:#eceef3;opacity:.9}.gaplabel{fill:#6b7080;font-size:10px;text-anchor:middle}
.bar.ok{fill:#3aa76d}.bar.failed{fill:#d9534f}.bar.interrupted{fill:#f0a04b}.bar.open{fill:#5aa0e0}.bar.wait{fill:url(#hatch)}.bar.backoff{fill:#b9bcc7}.bar.comp{fill:#6f7fd8}.bar.comp-failed{fill:#a83279}
.attempt{fill:#fff;font-size:10px;font-weight:700}
line.decision{stroke:#8e44ad;stroke-width:1.5;stroke-dasharray:3 2}line.reboot{stroke:#c0392b;stroke-width:2}
.legend .k{display:inline-block;width:14px;height:10px;margin:0 4px 0 10px;vertical-align:middle;border-radius:2px}
.k.ok{background:#3aa76d}.k.failed{background:#d9534f}.k.interrupted{background:#f0a04b}.k.open{background:#5aa0e0}.k.wait{background:repeating-linear-gradient(45deg,#efe6fb 0 3px,#8e6cc9 3px 5px)}.k.backoff{background:#b9bcc7}.k.comp{background:#6f7fd8}.k.gapk{background:#eceef3;border:1px solid #ccd}.k.decisionk{background:#8e44ad;width:3px}.k.rebootk{background:#c0392b;width:3px}
.edge{fill:none;stroke:#889;stroke-width:1.4}
.dagbox{border:1px solid #e6e6ee;background:#fff;max-width:100%}.dagbox svg{display:block;height:auto;margin:0 auto}
details.fold summary{cursor:pointer}details.fold pre{margin:4px 0;max-height:240px}
#events td details summary{cursor:pointer}
.node rect{stroke:#556;stroke-width:1;fill:#eef0f5}.nid{font-weight:600}.nkind{fill:#555b6b;font-size:11px}
.node.s-ok rect{fill:#d6f2e1;stroke:#2e8b57}.node.s-failed rect{fill:#fbdada;stroke:#c0392b}.node.s-skipped rect{fill:#eeeeee;stroke:#999;stroke-dasharray:4 2}.node.s-running rect,.node.s-interrupted rect{fill:#fde8cf;stroke:#d35400}.node.s-waiting rect{fill:#efe6fb;stroke:#8e6cc9}.node.s-compensated rect{fill:#dfe3fa;stroke:#5b6bbf}
tr.step-row.s-failed td:first-child{color:#c0392b;font-weight:600}
.failure{border-left:4px solid #d9534f;padding:2px 12px;margin:10px 0;background:#fff}
.controls{margin:8px 0}.controls label{margin-right:10px}.controls select,.controls input{font:inherit}
#events td:nth-child(1),#events td:nth-child(3){text-align:right;color:#6b7080;font-variant-numeric:tabular-nums}
#events td:nth-child(-n+5){white-space:nowrap}
#events td:nth-child(6){font-family:ui-monospace,Consolas,monospace;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
tr.summary td{color:#7a5b00;background:#fff8e6}
footer{margin-top:30px}
"#;

const JS: &str = r#"
(function(){
  var D = JSON.parse(document.getElementById('data').textContent);
  var rows = D.rows, stepSel = document.getElementById('f-step'), typeSel = document.getElementById('f-type');
  var text = document.getElementById('f-text'), body = document.getElementById('rows');
  D.steps.forEach(function(s, i){ var o = document.createElement('option'); o.value = String(i); o.textContent = s; stepSel.appendChild(o); });
  D.types.forEach(function(t, i){ var o = document.createElement('option'); o.value = String(i); o.textContent = t; typeSel.appendChild(o); });
  var view = rows, page = 0;
  function pad(n, w){ n = String(n); while (n.length < w) n = '0' + n; return n; }
  function fmt(ms){ var d = new Date(T0 + ms); return d.getUTCFullYear() + '-' + pad(d.getUTCMonth()+1,2) + '-' + pad(d.getUTCDate(),2) + ' ' + pad(d.getUTCHours(),2) + ':' + pad(d.getUTCMinutes(),2) + ':' + pad(d.getUTCSeconds(),2) + '.' + pad(d.getUTCMilliseconds(),3); }
  function rel(ms){ return ms < 1000 ? ms + ' ms' : (ms/1000).toFixed(1) + ' s'; }
  function filter(){
    var s = stepSel.value === '' ? null : Number(stepSel.value);
    var t = typeSel.value === '' ? null : Number(typeSel.value);
    var q = text.value.toLowerCase();
    view = rows.filter(function(r){ return (s === null || r[3] === s) && (t === null || r[2] === t) && (q === '' || r[4].toLowerCase().indexOf(q) >= 0); });
    page = 0; render();
  }
  function render(){
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    if (page >= pages) page = pages - 1;
    var frag = document.createDocumentFragment();
    view.slice(page * PAGE, (page + 1) * PAGE).forEach(function(r){
      var tr = document.createElement('tr'); tr.className = 'ev' + (r[4].charAt(0) === '\u2026' ? ' summary' : '');
      [String(r[0]), fmt(r[1]), rel(r[1]), D.types[r[2]], r[3] >= 0 ? D.steps[r[3]] : ''].forEach(function(c){ var td = document.createElement('td'); td.textContent = c; tr.appendChild(td); });
      // A long text folds: its start, and the whole when opened (never cut).
      var td = document.createElement('td');
      if (r[4].length > FOLD) {
        var d = document.createElement('details'), sm = document.createElement('summary');
        sm.textContent = r[4].slice(0, FOLD - 40) + '\u2026';
        d.appendChild(sm); d.appendChild(document.createTextNode(r[4])); td.appendChild(d);
      } else { td.textContent = r[4]; }
      tr.appendChild(td);
      frag.appendChild(tr);
    });
    body.textContent = ''; body.appendChild(frag);
    document.getElementById('page').textContent = 'page ' + (page + 1) + ' / ' + pages;
    document.getElementById('count').textContent = view.length + ' of ' + rows.length + ' rows shown (' + D.total + ' events in the run; progress and checkpoint events beyond the first and last ' + 25 + ' per step are summarised)';
    document.body.setAttribute('data-ready', '1');
  }
  stepSel.onchange = filter; typeSel.onchange = filter;
  var timer = null; text.oninput = function(){ clearTimeout(timer); timer = setTimeout(filter, 150); };
  document.getElementById('prev').onclick = function(){ if (page > 0) { page--; render(); } };
  document.getElementById('next').onclick = function(){ if ((page + 1) * PAGE < view.length) { page++; render(); } };
  // Clicking a step in the graph, the summary or the timeline filters the list.
  Array.prototype.forEach.call(document.querySelectorAll('[data-step]'), function(el){
    el.style.cursor = 'pointer';
    el.addEventListener('click', function(){ var i = D.steps.indexOf(el.getAttribute('data-step')); stepSel.value = i >= 0 ? String(i) : ''; filter(); document.getElementById('events').scrollIntoView(); });
  });
  render();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_journal::{Actor, RunId};

    fn big_run(n: u64) -> Vec<Envelope> {
        let run = RunId::new();
        let t0 = Utc::now();
        let mut ev = vec![Event::RunStarted {
            plan_name: "big".into(),
            plan_path: "/x/big.toml".into(),
            plan_text: "name = \"big\"\n[steps.loop]\nkind = \"foreach\"\nwith = { items = [\"a\"], program = \"true\" }\n".into(),
            plan_hash: "00".into(),
            vars: Default::default(),
            engine_version: "0.1.0".into(),
            actor: Actor::default(),
        }];
        ev.push(Event::StepStarted {
            step: "loop".into(),
            attempt: 1,
            resumed_from_checkpoint: false,
        });
        for i in 0..n {
            ev.push(Event::StepCheckpoint {
                step: "loop".into(),
                data: i.to_string().into_bytes(),
                done: i + 1,
                total: n,
            });
        }
        ev.push(Event::StepFailed {
            step: "loop".into(),
            attempt: 1,
            error: "item a: <b>exit 1</b>".into(),
            output_tail: "line 1\nline 2\n".into(),
            transient: false,
        });
        ev.into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                run,
                seq: i as u64,
                time: t0 + chrono::Duration::milliseconds(i as i64),
                event,
            })
            .collect()
    }

    #[test]
    fn progress_is_summarised_and_text_is_escaped() {
        let events = big_run(10_000);
        let loaded = Loaded {
            run: events[0].run,
            events,
            origin: super::super::Origin::Journal("/j".into()),
            damage: None,
        };
        let html = render(&loaded).unwrap();
        // 2 × RAW_KEEP checkpoints, one summary row, 3 other events.
        let data = event_data(&loaded.events, loaded.events[0].time);
        assert_eq!(data.rows.len(), 2 * RAW_KEEP + 1 + 3);
        assert_eq!(
            data.omitted["loop"]["step.checkpoint"],
            10_000 - 2 * RAW_KEEP as u64
        );
        assert!(html.contains("summarised (seq 27..=9976)"), "marker row");
        assert!(html.contains("item a: &lt;b&gt;exit 1&lt;/b&gt;"));
        assert!(!html.contains("<b>exit 1</b>"));
        assert!(html.len() < 200_000, "{} bytes", html.len());
        assert!(
            !html.contains("<link") && !html.contains(" src="),
            "no external resources"
        );
    }
}
