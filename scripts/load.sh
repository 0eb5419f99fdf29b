#!/bin/bash
# One load run, as reported in the issues' notes: a fresh `spot serve` on an empty data
# directory, `spot emulate` against it, then the emulator's summary, the server's
# acknowledgement histogram (end of POST body -> 200) and the server's CPU time and RSS.
#
#   scripts/load.sh [BIN] SPOTS RATE SECONDS      e.g. scripts/load.sh 1000 100 15
#
# BIN defaults to target/release/spot; PORT (default 18080) and TMPDIR may be set.
set -euo pipefail
BIN=target/release/spot
if [ $# -eq 4 ]; then BIN=$1; shift; fi
[ $# -eq 3 ] || { echo "usage: $0 [BIN] SPOTS RATE SECONDS" >&2; exit 2; }
SPOTS=$1 RATE=$2 SECONDS_=$3 PORT=${PORT:-18080}
DIR=$(mktemp -d)
OUT=$(mktemp)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR" "$OUT"' EXIT
"$BIN" serve --listen "127.0.0.1:$PORT" --data "$DIR/data" >"$DIR/serve.log" 2>&1 &
SERVER=$!
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/spots"; do sleep 0.1; done
"$BIN" emulate --server "http://127.0.0.1:$PORT" --spots "$SPOTS" --rate "$RATE" \
    --duration "$SECONDS_" --quiet >"$OUT"
python3 - "$OUT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d["total"]
print(f"acked {t['events_acked']} of {t['events_generated']} in {d['elapsed_s']:.1f} s = "
      f"{t['events_per_second']:.0f} events/s, reconnects {t['reconnects']}")
PY
curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^spot_ack_seconds_bucket/ {
    sub(/spot_ack_seconds_bucket/, ""); printf "%s %s  ", $1, $2 } END { print "" }'
echo "server cpu (time) and rss (KiB): $(ps -o cputime=,rss= -p $SERVER)"
kill -TERM $SERVER
wait $SERVER || true
