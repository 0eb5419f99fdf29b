#!/usr/bin/env bash
# What the dashboard costs a browser under load: `spot serve` and `spot emulate` with SPOTS
# spots at RATE events/s each (50 items per spot: 50,000 items at 1,000 spots), headless
# chromium (through chromedriver's WebDriver HTTP API, with curl) signed in on each page of
# PAGES in turn; for each page the CPU of all chromium processes (utime+stime of
# /proc/<pid>/stat) over SECS seconds, as a share of one core. Also the time to first render
# (navigation start to the sign-in form) and from signing in to the overview's first numbers.
#
#   cargo build --release && scripts/dashboard-load.sh 1000 10 30
#
# Needs chromium, chromium-driver, curl and jq. Prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
SPOTS=${1:-1000} RATE=${2:-10} SECS=${3:-30}
PAGES=${PAGES:-"overview spots items events"}
BIN=${SPOT_BIN:-target/release/spot}
dir=$(mktemp -d)
port=${PORT:-18480} dport=${DRIVER_PORT:-19515}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

"$BIN" serve --listen "127.0.0.1:$port" --data "$dir/data" \
    --max-connections-per-address $((SPOTS * 3 + 100)) >"$dir/serve.log" 2>&1 &
pids+=($!)
chromedriver --port="$dport" >/dev/null 2>&1 &
dpid=$!
pids+=($dpid)
for _ in $(seq 300); do
    curl -s "127.0.0.1:$port/healthz" >/dev/null && curl -s "127.0.0.1:$dport/status" >/dev/null && break
    sleep 0.1
done
key=$(cat "$dir/data/admin.key")

wd() { curl -sf -X "$1" -H 'Content-Type: application/json' "http://127.0.0.1:$dport$2" ${3:+-d "$3"}; }
caps='{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--window-size=1280,800"]}}}}'
sid=$(wd POST /session "$caps" | jq -r .value.sessionId)
js() { wd POST "/session/$sid/execute/$1" "$(jq -nc --arg s "$2" '{script: $s, args: []}')" | jq .value; }
go() { wd POST "/session/$sid/url" "{\"url\":\"http://127.0.0.1:$port/$1\"}" >/dev/null; }

# The CPU ticks of chromedriver's descendants (the browser's processes).
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1"); do echo "$p"; descendants "$p"; done
}
ticks() {
    local total=0 p
    for p in $(descendants "$dpid"); do
        # Fields 14 and 15: utime, stime (the name in field 2 has no spaces for chromium).
        read -r -a f <"/proc/$p/stat" 2>/dev/null || continue
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

go ""
for _ in $(seq 100); do [ "$(js sync 'return !!document.querySelector("#api-key")')" = true ] && break; sleep 0.1; done
first_render=$(js sync 'return window.__spotDashboardReady')
el=$(wd POST "/session/$sid/element" '{"using":"css selector","value":"#api-key"}' | jq -r '.value | to_entries[0].value')
wd POST "/session/$sid/element/$el/value" "$(jq -nc --arg k "$key" '{text: $k}')" >/dev/null
signed_in_to_data=$(js async 'const done = arguments[0], t0 = performance.now();
  document.querySelector("#signin button[type=submit]").click();
  const check = () => { const e = document.querySelector("#items-present");
    if (e && e.textContent !== "—") done(performance.now() - t0); else requestAnimationFrame(check); };
  check();')

"$BIN" emulate --server "http://127.0.0.1:$port" --spots "$SPOTS" --rate "$RATE" --items 50 \
    --threads 2 --quiet >"$dir/emulate.json" 2>"$dir/emulate.log" &
epid=$!
pids+=($epid)
# Warm up: the spots connect and their items appear.
sleep 15
results=()
for page in $PAGES; do
    go "#/$page"
    sleep 3
    t0=$(ticks) s0=$(date +%s.%N)
    sleep "$SECS"
    t1=$(ticks) s1=$(date +%s.%N)
    cpu=$(echo "($t1 - $t0) / $hz / ($s1 - $s0)" | bc -l)
    results+=("$(jq -nc --arg p "$page" --argjson c "$(printf %.3f "$cpu")" '{page: $p, chromium_cores: $c}')")
done
metrics=$(curl -s -H "X-Api-Key: $key" "127.0.0.1:$port/metrics")
received=$(echo "$metrics" | awk '$1 == "spot_events_received_total" {print $2}')
overview=$(curl -s -H "X-Api-Key: $key" "127.0.0.1:$port/api/dashboard/overview" | jq -c '{spots, items}')
wd DELETE "/session/$sid" >/dev/null || true
jq -nc --argjson fr "$first_render" --argjson sd "$signed_in_to_data" \
    --argjson pages "[$(IFS=,; echo "${results[*]}")]" --argjson ov "$overview" \
    --arg received "$received" --arg spots "$SPOTS" --arg rate "$RATE" --arg secs "$SECS" \
    '{spots: ($spots|tonumber), rate: ($rate|tonumber), secs_per_page: ($secs|tonumber),
      first_render_ms: $fr, sign_in_to_overview_ms: $sd, pages: $pages, server_state: $ov,
      spot_events_received_total: ($received|tonumber)}'
