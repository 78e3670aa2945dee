//! `upshift check`, `upshift graph` and the text of `upshift run --dry-run`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::workspace::{load_plan, load_plan_to_run};
use crate::error::{Result, code};
use crate::plan::Plan;

use super::parse_vars;

/// Graph output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    /// Indented text, one step per line, in run order.
    Text,
    /// Graphviz DOT.
    Dot,
}

/// `upshift check PLAN [--site FILE] [--var K=V]`.
pub fn check(plan: &Path, vars: &[String], site: Option<&Path>) -> Result<u8> {
    let vars = parse_vars(vars)?;
    let p = load_plan_to_run(plan, &vars, site)?;
    let hosts = if p.hosts.is_empty() {
        String::new()
    } else {
        format!(
            ", {} host(s): {}",
            p.hosts.len(),
            p.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    println!(
        "{}: ok — plan \"{}\", {} steps, {} dependencies{hosts}",
        plan.display(),
        p.name,
        p.steps.len(),
        p.steps.values().map(|s| s.needs.len()).sum::<usize>()
    );
    for (id, why) in &p.absent {
        println!("  {id}: not on this site ({why})");
    }
    Ok(code::OK)
}

/// `upshift graph PLAN [--format text|dot]`.
pub fn graph(plan: &Path, format: GraphFormat, site: Option<&Path>) -> Result<u8> {
    let p = load_plan(plan, &BTreeMap::new(), site)?;
    print!("{}", graph_text(&p, format));
    Ok(code::OK)
}

/// `--dry-run`: each step's description, in dependency order. Secrets show
/// as placeholders, outputs of earlier steps as what they will be.
pub fn dry_run_text(p: &Plan) -> String {
    let registry = upshift_steps::registry();
    let mut out = format!(
        "plan \"{}\" — {} steps (dry run: nothing runs, nothing is journaled)\n",
        p.name,
        p.order.len()
    );
    if !p.hosts.is_empty() {
        out.push_str("\nhosts:\n");
        for h in p.hosts.values() {
            let cap = h
                .max_concurrent
                .map(|n| format!("; at most {n} step(s) at once"))
                .unwrap_or_default();
            out.push_str(&format!("   {}: {}{cap}\n", h.name, h.describe()));
        }
    }
    let resolver =
        crate::refs::MapResolver::placeholders(&p.vars, p.site.as_ref().map(|s| &s.values));
    for (i, id) in p.order.iter().enumerate() {
        let def = &p.steps[id];
        let needs = if def.needs.is_empty() {
            String::new()
        } else {
            format!(" (after {})", def.needs.join(", "))
        };
        let on = match &def.host {
            Some(h) => format!(" on {h}"),
            None if p.hosts.is_empty() => String::new(),
            None => " on the coordinator".into(),
        };
        out.push_str(&format!(
            "\n{}. {id} [{}]{on}{needs}\n",
            i + 1,
            def.body.kind
        ));
        if let Some(d) = &def.description {
            out.push_str(&format!("   {d}\n"));
        }
        let describe = |body: &crate::plan::Body| -> Vec<String> {
            let with = crate::plan::expand_target(&body.with, &p.targets)
                .and_then(|w| crate::refs::substitute_table(&w, &resolver).map_err(|b| b.message));
            match with.map(|w| registry[body.kind.as_str()].build(&w)) {
                Ok(Ok(step)) => step.describe(),
                Ok(Err(e)) => vec![format!("(cannot describe: {e})")],
                Err(e) => vec![format!("(cannot describe: {e})")],
            }
        };
        for l in describe(&def.body) {
            out.push_str(&format!("   {l}\n"));
        }
        if let Some(c) = &def.compensate {
            out.push_str(&format!("   on rollback [{}]:\n", c.kind));
            for l in describe(c) {
                out.push_str(&format!("     {l}\n"));
            }
        }
        let mut policy = Vec::new();
        if def.retry.attempts > 1 {
            policy.push(format!("up to {} attempts", def.retry.attempts));
        }
        if let Some(t) = def.timeout {
            policy.push(format!("timeout {}", humantime::format_duration(t)));
        }
        if !def.locks.is_empty() {
            let locks: Vec<String> = def
                .locks
                .iter()
                .map(|l| match p.lock_scope(l, def.host.as_deref()) {
                    _ if p.hosts.is_empty() => l.clone(),
                    crate::plan::LockScope::Site => format!("{l} (site-wide)"),
                    crate::plan::LockScope::Host(_) => format!("{l} (per host)"),
                })
                .collect();
            policy.push(format!("locks {}", locks.join(", ")));
        }
        policy.push(format!(
            "on failure {}",
            crate::report::on_failure_word(def.on_failure)
        ));
        out.push_str(&format!("   ({})\n", policy.join("; ")));
    }
    if !p.absent.is_empty() {
        out.push_str("\nnot on this site (not in the run; what needs them does not wait):\n");
        for (id, why) in &p.absent {
            out.push_str(&format!("   {id}: {why}\n"));
        }
    }
    if let Some(n) = &p.notify {
        out.push_str(&notify_text(n, &resolver));
    }
    out
}

/// `[notify]` in the dry run: when, where, how; secrets as placeholders.
fn notify_text(n: &crate::plan::Notify, resolver: &dyn crate::refs::Resolver) -> String {
    let show = |s: &str| match crate::refs::substitute_str(s, resolver) {
        Ok(toml::Value::String(v)) => v,
        Ok(other) => other.to_string(),
        Err(e) => format!("(cannot resolve: {})", e.message),
    };
    let on: Vec<&str> = n.on.iter().map(|t| t.word()).collect();
    let mut out = format!(
        "\nnotify on {} ({} attempt(s) of at most {} each; never delays the run):\n",
        on.join(", "),
        n.attempts,
        humantime::format_duration(n.timeout)
    );
    if let Some(w) = &n.webhook {
        out.push_str(&format!("   POST {} as {}\n", show(w), n.format.word()));
    }
    if !n.command.is_empty() {
        let argv: Vec<String> = n.command.iter().map(|a| show(a)).collect();
        out.push_str(&format!(
            "   run {:?} with the message as JSON on stdin and in UPSHIFT_NOTIFY_*\n",
            argv
        ));
        for (k, v) in &n.env {
            out.push_str(&format!("     env {k} = {}\n", show(v)));
        }
    }
    out
}

/// The plan's dependency graph as text or Graphviz DOT.
pub fn graph_text(p: &Plan, format: GraphFormat) -> String {
    match format {
        GraphFormat::Dot => {
            let mut out = format!(
                "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
                p.name.replace('"', "'")
            );
            for id in &p.order {
                let def = &p.steps[id];
                out.push_str(&format!(
                    "  \"{id}\" [label=\"{id}\\n{}\"];\n",
                    def.body.kind
                ));
                for n in &def.needs {
                    out.push_str(&format!("  \"{n}\" -> \"{id}\";\n"));
                }
            }
            out.push_str("}\n");
            out
        }
        GraphFormat::Text => {
            let mut out = String::new();
            // Level = longest path from a root, so parallel steps share a level.
            let mut level: BTreeMap<&str, usize> = BTreeMap::new();
            for id in &p.order {
                let l = p.steps[id]
                    .needs
                    .iter()
                    .map(|n| level[n.as_str()] + 1)
                    .max()
                    .unwrap_or(0);
                level.insert(id, l);
            }
            for id in &p.order {
                let def = &p.steps[id];
                let l = level[id.as_str()];
                let needs = if def.needs.is_empty() {
                    String::new()
                } else {
                    format!("  ← {}", def.needs.join(", "))
                };
                out.push_str(&format!(
                    "{:indent$}{id} [{}]{needs}\n",
                    "",
                    def.body.kind,
                    indent = l * 2
                ));
            }
            out
        }
    }
}
