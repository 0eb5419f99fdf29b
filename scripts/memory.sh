#!/usr/bin/env bash
# Measures the server's resident memory (VmRSS) as its live state grows: starts
# `spot serve` (release build), runs three `spot emulate` phases against it, and after each
# prints RSS and the live state's sizes from /metrics; then restarts it on the same data
# twice (with the given flags, then with --events-max-in-memory 1000), which separates what
# the state costs from what the derived events kept in memory cost (docs/memory.md quotes
# its output).
#
#   [RATE=events per second per spot] scripts/memory.sh [SPOTS] [ITEMS_PER_SPOT] [SECONDS] [-- extra serve flags]
#
# Defaults are small (the machine may be shared): 50 spots, 200 items each, 20 s per phase.
set -euo pipefail
cd "$(dirname "$0")/.."
spots=${1:-50}
items=${2:-200}
secs=${3:-20}
rate=${RATE:-20}
shift $(( $# < 3 ? $# : 3 ))
[[ "${1:-}" == "--" ]] && shift
spot=${SPOT_BIN:-target/release/spot}
[[ -x "$spot" ]] || { echo "memory.sh: $spot missing: cargo build --release -p spot-cli" >&2; exit 2; }
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid=
serve() {
    "$spot" serve -l "127.0.0.1:$port" -d "$data/d" --sync normal --metrics-public=true "$@" \
        2>>"$data/serve.log" &
    pid=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/metrics" >/dev/null && return
        sleep 0.1
    done
    echo "memory.sh: the server did not start: $(tail -3 "$data/serve.log")" >&2
    exit 1
}
stop() { kill "$pid"; wait "$pid" || true; }
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
serve "$@"
report() {
    local m rss
    m=$(curl -sf "http://127.0.0.1:$port/metrics")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    printf '%-28s rss_kib=%-8s' "$1" "$rss"
    for g in spot_spots spot_items spot_presences spot_events_in_memory; do
        printf ' %s=%s' "${g#spot_}" "$(grep "^$g " <<<"$m" | awk '{print $2}')"
    done
    echo
}
report "idle"
serial=1
for phase in 1 2 3; do
    "$spot" emulate -s "http://127.0.0.1:$port" -n "$spots" --first-serial "$serial" \
        --items "$items" --shared-share 0 -r "$rate" -d "$secs" --drain-secs 5 -q >/dev/null
    serial=$((serial + spots))
    report "after $((phase * spots)) spots"
done
stop
serve "$@"
report "restarted"
stop
serve "$@" --events-max-in-memory 1000
report "restarted, 1000 events kept"
