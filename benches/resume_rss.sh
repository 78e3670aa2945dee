#!/usr/bin/env bash
# Resume on a journal holding a 1,000,000-event run: time until the first
# step starts, and the engine's peak RSS (GNU time -v).
# Goals: first step within 1.5 s, peak RSS <= 64 MiB.
#
#   benches/resume_rss.sh [events]        (default 1000000)
#
# Builds the release binary and the generator (example gen_journal), writes
# the journal into a temp dir on the real disk, then times `upshift resume`.
# Baseline printed beside it: `upshift resume` of a 10-event run.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${1:-1000000}"
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin upshift --example gen_journal
BIN="$TARGET/release/upshift"
GEN="$TARGET/release/examples/gen_journal"
WORK="$(mktemp -d "${UPSHIFT_BENCH_DIR:-${TMPDIR:-/tmp}}/upshift-resume.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

measure() { # name events
  local name="$1" n="$2" dir="$WORK/$1"
  mkdir -p "$dir"
  local t0 run
  t0=$(date +%s.%N)
  run=$("$GEN" "$dir/journal" "$dir/marker" "$n")
  local gen_s
  gen_s=$(echo "$(date +%s.%N) - $t0" | bc)
  local size
  size=$(du -m "$dir/journal/journal.redb" | cut -f1)
  sync
  local start
  start=$(date +%s.%N)
  UPSHIFT_JOURNAL="$dir/journal" /usr/bin/time -v -o "$dir/time.txt" \
    "$BIN" resume "$run" >"$dir/out.txt" 2>"$dir/err.txt" || {
    echo "resume failed:"; cat "$dir/err.txt"; exit 1; }
  local first end
  first=$(cat "$dir/marker")
  end=$(date +%s.%N)
  local to_first rss_kib
  to_first=$(echo "$first - $start" | bc)
  rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
  echo "$name: $n events (${size} MiB, written in ${gen_s}s): first step after ${to_first}s, resume total $(echo "$end - $start" | bc)s, peak RSS $((rss_kib / 1024)) MiB ($rss_kib KiB)"
  eval "${name}_first=$to_first; ${name}_rss=$rss_kib"
}

measure small 10
measure big "$EVENTS"

verdict() { if [ "$(echo "$1" | bc)" = 1 ]; then echo PASS; else echo MISS; fi; }
echo "SUMMARY resume/first_step ($EVENTS-event run): figure=${big_first}s baseline=${small_first}s (10-event run) ratio=$(echo "scale=2; $big_first / 1.5" | bc)x of the 1.5s goal goal=<= 1.5s $(verdict "$big_first <= 1.5")"
echo "SUMMARY resume/peak_rss ($EVENTS-event run): figure=$((big_rss / 1024))MiB baseline=$((small_rss / 1024))MiB (10-event run) ratio=$(echo "scale=2; $big_rss / 65536" | bc)x of the 64MiB goal goal=<= 64MiB $(verdict "$big_rss <= 65536")"
