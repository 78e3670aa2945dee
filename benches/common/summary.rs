//! The summary line every bench prints per goal (also included by
//! `remote/benches/remote.rs`, which has no journal to share the rest of
//! `common` with): `SUMMARY <goal>: figure=.. baseline=.. ratio=..x goal=.. PASS|MISS|INFO`.

/// Whether the goal holds: `ratio <= goal` (Le) or `ratio >= goal` (Ge).
#[derive(Clone, Copy)]
pub enum Goal {
    /// The ratio must be at most the goal.
    AtMost(f64),
    /// The ratio must be at least the goal.
    AtLeast(f64),
    /// Report only.
    Report,
}

/// Prints the summary line of one goal.
pub fn summary(goal_name: &str, figure: &str, baseline: &str, ratio: f64, goal: Goal) {
    let (goal_text, verdict) = match goal {
        Goal::AtMost(g) => (format!("<= {g}x"), if ratio <= g { "PASS" } else { "MISS" }),
        Goal::AtLeast(g) => (format!(">= {g}x"), if ratio >= g { "PASS" } else { "MISS" }),
        Goal::Report => ("report".to_string(), "INFO"),
    };
    let line = format!(
        "SUMMARY {goal_name}: figure={figure} baseline={baseline} ratio={ratio:.2}x goal={goal_text} {verdict}"
    );
    println!("{line}");
    // Also collected in one file per `cargo bench` run, for RESULTS.md.
    if let Ok(dir) = std::env::var("UPSHIFT_BENCH_SUMMARY") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
