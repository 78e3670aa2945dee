//! `upshift preflight -o report.html`: the report as one self-contained
//! HTML file (inline CSS, no script, nothing loaded from anywhere).
//!
//! Text reaches the page only through [`Page::text`] and [`Page::cell`],
//! which escape it: no value from a plan, site or server is ever placed
//! into markup unescaped.

use upshift_steps::preflight::Check;

use super::Report;
use crate::support::html_escape;

/// A page under construction; markup is fixed strings, text is escaped.
struct Page(String);

impl Page {
    /// Fixed markup (never data).
    fn raw(&mut self, markup: &'static str) -> &mut Page {
        self.0.push_str(markup);
        self
    }
    /// Escaped text.
    fn text(&mut self, text: &str) -> &mut Page {
        self.0.push_str(&html_escape(text));
        self
    }
    /// `<td class="...">text</td>`, escaped.
    fn cell(&mut self, class: &'static str, text: &str) -> &mut Page {
        self.raw("<td class=\"")
            .raw(class)
            .raw("\">")
            .text(text)
            .raw("</td>")
    }
}

const STYLE: &str = "<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}.ready{color:#176f2c}.notready{color:#b00020}table{border-collapse:collapse;width:100%;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}.finding{background:#fde8ea}.ok{color:#176f2c}.nc{color:#666}td.mono{font-family:ui-monospace,monospace;white-space:nowrap}</style>";

/// One row per finding: step (with the steps folded into it), host,
/// found, expected, fix.
fn finding_rows(p: &mut Page, r: &Report, row: &'static str) {
    for l in r.findings() {
        if let Check::Finding {
            found,
            expected,
            fix,
        } = &l.check
        {
            let step = match (&l.step, l.also_steps.is_empty()) {
                (Some(s), true) => s.clone(),
                (Some(s), false) => format!("{s} (also {})", l.also_steps.join(", ")),
                (None, _) => "(host)".to_string(),
            };
            p.raw(row)
                .cell("mono", &step)
                .cell("mono", &l.host)
                .cell("", found)
                .cell("", expected)
                .cell("", fix)
                .raw("</tr>");
        }
    }
}

/// One row per check: step, host, result, what; `classes` are the result
/// cell's CSS classes for ok, finding and not checked.
fn check_rows(p: &mut Page, r: &Report, classes: [&'static str; 3]) {
    for l in &r.checks {
        let (class, word, what) = match &l.check {
            Check::Ok { what } => (classes[0], "ok", what.clone()),
            Check::Finding { found, .. } => (classes[1], "FINDING", found.clone()),
            Check::NotChecked { what, why } => {
                (classes[2], "not checked", format!("{what}: {why}"))
            }
        };
        p.raw("<tr>")
            .cell("mono", l.step.as_deref().unwrap_or("(host)"))
            .cell("mono", &l.host)
            .cell(class, word)
            .cell("", &what)
            .raw("</tr>");
    }
}

/// The report as a self-contained HTML page.
pub fn render(r: &Report) -> String {
    let mut p = Page(String::new());
    p.raw("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>upshift preflight: ")
        .text(&r.plan)
        .raw("</title>")
        .raw(STYLE)
        .raw("</head><body><h1>Preflight of ")
        .text(&r.plan)
        .raw("</h1><p>Plan ")
        .text(&r.plan_path);
    if let Some(s) = &r.site {
        p.raw(", site ").text(s);
    }
    p.raw("</p>");
    if r.ready {
        p.raw("<p class=\"ready\"><b>Ready</b>: no finding.</p>");
    } else {
        p.raw("<p class=\"notready\"><b>")
            .text(&format!("{} finding(s)", r.findings))
            .raw("</b>: fix them before the maintenance window.</p>");
        p.raw("<h2>Findings</h2><table><tr><th>step</th><th>host</th><th>found</th><th>expected</th><th>fix</th></tr>");
        finding_rows(&mut p, r, "<tr class=\"finding\">");
        p.raw("</table>");
    }
    p.raw("<h2>Every check</h2><table><tr><th>step</th><th>host</th><th>result</th><th>what</th></tr>");
    check_rows(&mut p, r, ["ok", "finding", "nc"]);
    p.raw("</table><p class=\"nc\">")
        .text(&format!(
            "{} check(s) in {} ms. Preflight changed nothing and journaled nothing.",
            r.checks.len(),
            r.elapsed_ms
        ))
        .raw("</p></body></html>\n");
    p.0
}

/// The CSS the run report adds for [`section`] (its other classes, `list`
/// and `muted`, are the run report's own).
pub const SECTION_CSS: &str = ".pf-ready{color:#176f2c}.pf-notready{color:#b00020}tr.pf-finding td{background:#fde8ea}.pf-ok{color:#176f2c}.pf-nc{color:#666}";

/// The preflight as a section of the run report (`upshift report
/// --preflight FILE.json`, and the demo's report; with [`SECTION_CSS`]):
/// the verdict, the findings with step, host, found, expected and fix, the
/// counts, and every check folded away. All text escaped.
pub fn section(r: &Report) -> String {
    let count = |f: fn(&Check) -> bool| r.checks.iter().filter(|l| f(&l.check)).count();
    let ok = count(|c| matches!(c, Check::Ok { .. }));
    let nc = count(|c| matches!(c, Check::NotChecked { .. }));
    let mut p = Page(String::new());
    p.raw("<section id=\"preflight\"><h2>Preflight</h2>");
    if r.ready {
        p.raw("<p class=\"pf-ready\"><b>Ready</b>: no finding. ");
    } else {
        p.raw("<p class=\"pf-notready\"><b>Not ready</b>: ")
            .text(&format!("{} finding(s). ", r.findings));
    }
    p.raw("Plan ")
        .text(&r.plan)
        .raw(" (")
        .text(&r.plan_path)
        .raw(")");
    if let Some(s) = &r.site {
        p.raw(", site ").text(s);
    }
    p.raw("</p><p class=\"muted\">")
        .text(&format!(
            "{} check(s) in {} ms: {ok} ok, {} finding(s), {nc} not checked. Preflight changed nothing and journaled nothing; this is the report it printed with --json.",
            r.checks.len(),
            r.elapsed_ms,
            r.findings
        ))
        .raw("</p>");
    if !r.ready {
        p.raw("<table class=\"list\" id=\"preflight-findings\"><tr><th>step</th><th>host</th><th>found</th><th>expected</th><th>fix</th></tr>");
        finding_rows(&mut p, r, "<tr class=\"pf-finding\">");
        p.raw("</table>");
    }
    p.raw("<details><summary>")
        .text(&format!("Every check ({})", r.checks.len()))
        .raw("</summary><table class=\"list\"><tr><th>step</th><th>host</th><th>result</th><th>what</th></tr>");
    check_rows(&mut p, r, ["pf-ok", "pf-notready", "pf-nc"]);
    p.raw("</table></details></section>");
    p.0
}
