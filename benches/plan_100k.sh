#!/usr/bin/env bash
# A 100,000-step plan: `upshift check` and `upshift run` of no-op steps
# (`sleep 0s`) must each complete with a peak RSS <= 256 MiB (GNU time -v).
# The plan is 10 independent chains of 10,000 steps, run 10 at a time, so a
# commit carries ~10 transitions (a single 100,000-step chain takes
# 100,000 sequential commits, i.e. minutes of fsyncs, for the same memory).
# Baseline printed beside it: the same commands on a 1,000-step plan.
#
# A run pins its plan text in its first journal event; the 7.4 MiB text of
# 100,000 steps is stored deflated (codec version 2: an event may hold 4 MiB
# as stored), and a plan over 1 MiB is parsed 500 steps at a time
# (src/plan/chunks.rs), so both commands are measured at 100,000 steps.
#
#   benches/plan_100k.sh [steps] [run_steps]   (default 100000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-100000}"
RUN_STEPS="${2:-100000}"
CHAINS=10
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin upshift --bin upshift-guard
BIN="$TARGET/release/upshift"
WORK="$(mktemp -d "${UPSHIFT_BENCH_DIR:-${TMPDIR:-/tmp}}/upshift-100k.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

plan() { # file steps
  python3 - "$1" "$2" "$CHAINS" <<'PY'
import sys
path, steps, chains = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = steps // chains
with open(path, "w") as f:
    f.write('name = "noop"\n')
    for c in range(chains):
        for i in range(per):
            f.write(f'[steps.c{c}_{i}]\nkind = "sleep"\nwith = {{ duration = "0s" }}\n')
            if i:
                f.write(f'needs = ["c{c}_{i-1}"]\n')
PY
}

measure() { # name what steps
  local name="$1" what="$2" n="$3" dir="$WORK/$1-$2"
  mkdir -p "$dir"
  plan "$dir/plan.toml" "$n"
  if [ "$what" = check ]; then
    /usr/bin/time -v -o "$dir/time.txt" "$BIN" check "$dir/plan.toml" >/dev/null
  else
    /usr/bin/time -v -o "$dir/time.txt" "$BIN" run "$dir/plan.toml" \
      --journal "$dir/journal" --concurrency "$CHAINS" >/dev/null 2>"$dir/err.txt" || {
      echo "$name $what: $n steps: the run failed: $(grep -m1 -i 'exceeds\|error' "$dir/err.txt")"
      return 1; }
  fi
  local rss wall
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/time.txt")
  echo "$name $what: $n steps, wall $wall, peak RSS $((rss / 1024)) MiB ($rss KiB)"
  eval "${name}_${what}=$rss"
}

measure small check 1000
measure small run 1000
measure big check "$STEPS"
measure big run "$RUN_STEPS"

verdict() { if [ "$(echo "$1" | bc)" = 1 ]; then echo PASS; else echo MISS; fi; }
for what in check run; do
  big="big_$what"; small="small_$what"
  steps=$STEPS; [ "$what" = run ] && steps=$RUN_STEPS
  echo "SUMMARY plan_100k/$what ($steps steps): figure=$((${!big} / 1024))MiB baseline=$((${!small} / 1024))MiB (1,000 steps) ratio=$(echo "scale=2; ${!big} / 262144" | bc)x of the 256MiB goal goal=<= 256MiB $(verdict "${!big} <= 262144")"
done
