//! Writes a journal holding one resumable run of N events (default
//! 1,000,000) for `benches/resume_rss.sh`:
//! `gen_journal <journal dir> <marker file> [events]`.
//! Resuming the run starts step `mark`, which writes its start time to the
//! marker file. Prints the run id.

#[path = "../common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen_journal <journal dir> <marker file> [events]");
        std::process::exit(2);
    }
    let events: u64 = args
        .get(3)
        .map(|n| n.parse().expect("events is a number"))
        .unwrap_or(1_000_000);
    let run = common::history::write(
        std::path::Path::new(&args[1]),
        events,
        std::path::Path::new(&args[2]),
    );
    println!("{run}");
}
