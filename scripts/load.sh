#!/bin/bash
# One load run, as reported in the issues' notes: a fresh `spot serve` on an empty data
# directory, `spot emulate` against it, then the emulator's summary, the server's
# acknowledgement histogram (end of POST body -> 200), the CPU seconds of the server and of
# the load generator (both share the machine), and the server's RSS.
#
#   scripts/load.sh [BIN] SPOTS RATE SECONDS      e.g. scripts/load.sh 1000 100 15
#
# BIN defaults to target/release/spot; EMULATOR (default BIN: the load generator, to drive
# two servers with the same one), PORT (default 18080) and TMPDIR may be set.
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
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do sleep 0.1; done
KEY=$(cat "$DIR/data/admin.key") # the first admin key, written by the first start
/usr/bin/time -o "$DIR/emulator.time" -f '%U %S' \
    "${EMULATOR:-$BIN}" emulate --server "http://127.0.0.1:$PORT" --spots "$SPOTS" --rate "$RATE" \
    --duration-secs "$SECONDS_" --quiet >"$OUT" || [ $? -eq 2 ] # 2: not all acked (overload)
# Server CPU from /proc (clock ticks), read before the server stops.
read -r UTIME STIME < <(awk '{print $14, $15}' "/proc/$SERVER/stat")
RSS=$(ps -o rss= -p "$SERVER")
python3 - "$OUT" "$DIR/emulator.time" "$UTIME" "$STIME" "$(getconf CLK_TCK)" "$RSS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d["total"]
emu = sum(float(x) for x in open(sys.argv[2]).read().split()[-2:])
server = (int(sys.argv[3]) + int(sys.argv[4])) / int(sys.argv[5])
acked = max(t["events_acked"], 1)
print(f"acked {t['events_acked']} of {t['events_generated']} in {d['elapsed_s']:.1f} s = "
      f"{t['acked_per_second']:.0f} acked/s, reconnects {t['reconnects']}, "
      f"resent {t['events_resent']}")
print(f"cpu: server {server:.2f} s ({server / acked * 1e6:.1f} us/event), "
      f"load generator {emu:.2f} s ({emu / acked * 1e6:.1f} us/event); "
      f"server rss {int(sys.argv[6]) // 1024} MiB")
PY
curl -s -H "X-Api-Key: $KEY" "http://127.0.0.1:$PORT/metrics" | awk '/^spot_ack_seconds_bucket/ {
    sub(/spot_ack_seconds_bucket/, ""); printf "%s %s  ", $1, $2 } END { print "" }'
kill -TERM $SERVER
wait $SERVER || true
