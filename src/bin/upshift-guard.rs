//! `upshift-guard`: the child-process guard of `upshift` on its own (see
//! `upshift_steps::child`), with the same arguments as `upshift __guard`:
//! `upshift-guard __guard <engine pid> --spec-on-stdin` (the engine's form:
//! the step comes over stdin) or `... -- program [args...]`.
//!
//! The engine uses one guard per step attempt (started ahead of time, while
//! the previous step runs): this binary links only the guard, and exec'ing
//! it costs a fraction of exec'ing the full `upshift` (measured in
//! benches/RESULTS.md). The engine uses it when it sits beside the `upshift`
//! binary, and falls back to `upshift __guard` otherwise.

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some("__guard".as_ref()) {
        // layout: allow(print) — a binary of its own: its usage goes to its stderr.
        eprintln!(
            "usage: upshift-guard __guard <engine pid> (--spec-on-stdin | -- program [args...]) (internal)"
        );
        std::process::exit(2);
    }
    std::process::exit(upshift_steps::child::guard_main(args.collect()));
}
