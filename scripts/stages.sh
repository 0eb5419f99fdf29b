#!/bin/bash
# Where the server's CPU goes, by pipeline stage, under the bench's load generator: a fresh
# `spot serve --sync full`, `spotload` against it, then for each of the server's threads
# (named by stage: tokio-rt-worker = ingest and HTTP, spot-apply, spot-writer, spot-rows,
# spot-checkpoint) the CPU it used per acknowledged event and the time it waited for a CPU
# while runnable (schedstat: a stage that waits much is starved, not slow).
#
#   scripts/stages.sh [BIN] SPOTS RATE [SECONDS]    e.g. scripts/stages.sh 1000 200 10
#
# BIN defaults to target/release/spot. spotload is built from ../shared/bench into
# CARGO_TARGET_DIR (default /tmp/spot-bench-target) if missing. On a shared machine, other
# sessions' work skews the waits: measure on an idle one.
set -euo pipefail
BIN=target/release/spot
if [ $# -ge 3 ] && [ -x "$1" ]; then BIN=$1; shift; fi
[ $# -ge 2 ] || { echo "usage: $0 [BIN] SPOTS RATE [SECONDS]" >&2; exit 2; }
SPOTS=$1 RATE=$2 SECONDS_=${3:-10} PORT=${PORT:-18090}
BENCH=$(cd "$(dirname "$0")/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/spot-bench-target}
SPOTLOAD=$CARGO_TARGET_DIR/release/spotload
[ -x "$SPOTLOAD" ] || cargo build --release --locked --manifest-path "$BENCH/Cargo.toml" -p spotload
DIR=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$BIN" serve --listen "127.0.0.1:$PORT" --data "$DIR/data" --sync full >"$DIR/serve.log" 2>&1 &
SERVER=$!
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do sleep 0.1; done
# Per stage (thread name): on-CPU ns, runqueue-wait ns (/proc/PID/task/TID/schedstat).
snapshot() {
    for t in /proc/$SERVER/task/*; do
        echo "$(tr ' ' _ <"$t/comm") $(cat "$t/schedstat")"
    done | awk '{run[$1] += $2; wait[$1] += $3} END {for (k in run) print k, run[k], wait[k]}' | sort
}
snapshot >"$DIR/before"
"$SPOTLOAD" --target "127.0.0.1:$PORT" --spots "$SPOTS" --rate "$RATE" --duration "$SECONDS_" >"$DIR/load.json"
snapshot >"$DIR/after"
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
python3 - "$DIR/load.json" "$DIR/before" "$DIR/after" "$RSS" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
read = lambda p: {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(p)}
before, after = read(sys.argv[2]), read(sys.argv[3])
acked = max(load["events_acked"], 1)
print(f"{load['events_per_s']:,} ev/s acked, ack p50 {load['ack_ms_p50']} ms, p99 {load['ack_ms_p99']} ms, "
      f"peak RSS {int(sys.argv[4]) // 1024} MB")
print(f"{'stage':<18}{'CPU s':>8}{'us/ev':>8}{'waited s':>10}")
total = 0
for stage, (run, wait) in sorted(after.items(), key=lambda kv: -kv[1][0]):
    run0, wait0 = before.get(stage, (0, 0))
    cpu, waited = (run - run0) / 1e9, (wait - wait0) / 1e9
    total += cpu
    if cpu >= 0.005:
        print(f"{stage:<18}{cpu:>8.2f}{cpu * 1e6 / acked:>8.2f}{waited:>10.2f}")
print(f"{'all':<18}{total:>8.2f}{total * 1e6 / acked:>8.2f}")
PY
