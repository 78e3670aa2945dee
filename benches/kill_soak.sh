#!/usr/bin/env bash
# The full kill soak: demo-like runs under >= 200 seeded random external
# SIGKILLs in total, resumed each time; every run must succeed with no
# completed step repeated, no event lost (gapless seqs) and no step process
# left running (tests/e2e/hardening.rs, soak_*). A few minutes.
#
#   benches/kill_soak.sh [kills]     (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
UPSHIFT_SOAK_KILLS="${1:-200}" exec cargo test --release --test e2e \
  -- --exact --nocapture --test-threads 1 \
  hardening::soak_random_sigkills_across_runs_lose_nothing_and_repeat_no_completed_step
