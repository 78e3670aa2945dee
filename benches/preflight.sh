#!/usr/bin/env bash
# Preflight of the TM plan on the demo site: wall time (goal: under 5 s,
# issue 15), steps checked in parallel per host (--per-host 8, the
# default) against one after another (--per-host 1, the baseline measured
# in the same run).
#
#   benches/preflight.sh [UPSHIFT_BINARY] [ROUNDS]
#
# Builds the demo site with `upshift demo` (the whole run: ~25 s), starts
# its stand-ins again, then times ROUNDS (default 10) preflights of each
# mode, alternating. Prints SUMMARY lines like the other benches.
set -euo pipefail
bin=${1:-target/release/upshift}
rounds=${2:-10}
dir=$(mktemp -d /tmp/upshift-bench-preflight.XXXXXX)
pid=""
cleanup() {
  touch "$dir/standins.stop" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin" demo --dir "$dir/demo" > /dev/null 2> "$dir/demo.log"
d="$dir/demo"
# The demo stopped its stand-ins when the run succeeded: start them again
# and point the site file at the new SQL Server port.
rm -f "$d/standins.stop" "$d/standins.json"
"$bin" __demo-standins "$d" > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ -s "$d/standins.json" ] && break; sleep 0.1; done
port=$(sed -n 's/.*"sql_port":\([0-9]*\).*/\1/p' "$d/standins.json")
sed -i "0,/^port = [0-9]*/s//port = $port/" "$d/plan/sites/demo.toml"

run() { # $1 = per-host; prints elapsed_ms of one preflight (exit 0 required)
  "$bin" preflight "$d/plan/teammanager.toml" --site "$d/plan/sites/demo.toml" \
    --var "install_dir=$d/Luware AG" --var "packages=$d/packages" \
    --var "scripts_dir=$d/plan/sql" --var "msiexec=$d/bin/msiexec" \
    --var "powershell=$d/bin/pwsh" --var "systemctl=$d/bin/systemctl" \
    --var "secret:sql_password=file:$d/secrets/sql_password" \
    --per-host "$1" --json > "$dir/out.json"
  sed -n 's/^  "elapsed_ms": \([0-9]*\).*/\1/p' "$dir/out.json"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
par=(); ser=(); wall=()
for _ in $(seq 1 "$rounds"); do
  t0=$(date +%s%N); par+=("$(run 8)"); t1=$(date +%s%N)
  wall+=($(( (t1 - t0) / 1000000 )))
  ser+=("$(run 1)")
done
checks=$(grep -c '"result"' "$dir/out.json")
p=$(printf '%s\n' "${par[@]}" | median)
s=$(printf '%s\n' "${ser[@]}" | median)
w=$(printf '%s\n' "${wall[@]}" | median)
echo "preflight of the TM plan on the demo site: $checks checks, $rounds rounds (medians)"
echo "SUMMARY preflight wall (process start to exit, parallel): figure=${w}ms goal=<5000ms $([ "$w" -lt 5000 ] && echo PASS || echo MISS)"
echo "SUMMARY preflight checks parallel per host vs serial: figure=${p}ms baseline=${s}ms ratio=$(awk "BEGIN {printf \"%.2f\", $s / ($p > 0 ? $p : 1)}")x INFO"
