#!/usr/bin/env bash
# Cluster mode under spotload (../shared/bench), beside the embedded server in the same run:
# three nats-server -js clustered over routes, a fresh PostgreSQL database on the local
# server, `spot serve` cluster nodes, nginx in front; then the embedded `spot serve` alone.
#
#   scripts/cluster-bench.sh [SPOTS] [RATE] [SECS]          (default 100 50 10)
#
# Layouts (LAYOUT, default "two"):
#   two    two nodes with every role, both behind nginx (the headline figure);
#   split  two edge nodes behind nginx and one stage node (CPU per role).
# PARTITIONS (default 1): the cluster's partitions; with "two", node a prefers the even
# ones and node b the odd ones (--prefer-partitions), so each owns its share.
# Prints spotload's figures (acked ev/s, ack p50/p99), CPU seconds per acknowledged event
# of each process (spot nodes, NATS servers, nginx), JetStream bytes per event (SPOT_IN,
# SPOT_OUT), PostgreSQL rows written and WAL bytes per event.
# Needs: SPOT_BIN (release `spot`), spotload in $CARGO_TARGET_DIR/release (see
# ../shared/bench/README.md), nats-server, nginx, psql against 127.0.0.1:5432 as postgres.
set -euo pipefail
SPOTS=${1:-100}
RATE=${2:-50}
SECS=${3:-10}
LAYOUT=${LAYOUT:-two}
PARTITIONS=${PARTITIONS:-1}
SPOT_BIN=${SPOT_BIN:?set SPOT_BIN to a release spot binary}
SPOTLOAD=${SPOTLOAD:-${CARGO_TARGET_DIR:-/tmp/spot-bench-target}/release/spotload}
DIR=$(mktemp -d /tmp/spot-cluster-bench.XXXXXX)
DB=spot_bench_$$
TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -qX -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [[ -n ${KEEP:-} ]] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
ulimit -n 65536 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
wait_port() { # port [log]
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; [[ -n ${2:-} ]] && tail -5 "$2" >&2; return 1
}

# NATS: three servers, routes between them.
NP=() ; CP=() ; MP=()
for i in 0 1 2; do NP+=("$(free_port)"); CP+=("$(free_port)"); MP+=("$(free_port)"); done
ROUTES=$(for i in 0 1 2; do printf 'nats-route://127.0.0.1:%s,' "${CP[$i]}"; done)
ROUTES=${ROUTES%,}
NATS_PIDS=()
for i in 0 1 2; do
  mkdir -p "$DIR/n$i"
  cat >"$DIR/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${NP[$i]}
http: 127.0.0.1:${MP[$i]}
jetstream { store_dir: "$DIR/n$i", max_memory_store: 256MB, max_file_store: 8GB }
cluster { name: spotbench, listen: 127.0.0.1:${CP[$i]}, routes: [${ROUTES//,/, }] }
EOF
  nats-server -c "$DIR/n$i.conf" >"$DIR/n$i.log" 2>&1 &
  PIDS+=($!); NATS_PIDS+=($!)
done
for i in 0 1 2; do wait_port "${NP[$i]}"; done
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:${MP[0]}/jsz" | grep -q '"leader"' && break; sleep 0.2
done
NATS_URLS="nats://127.0.0.1:${NP[0]},nats://127.0.0.1:${NP[1]},nats://127.0.0.1:${NP[2]}"
psql -qX -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
PG="postgres://postgres@127.0.0.1:5432/$DB"

node() { # name roles [preferred partitions]
  local port; port=$(free_port)
  local prefer=(); [[ -n ${3:-} ]] && prefer=(--prefer-partitions "$3")
  "$SPOT_BIN" serve --listen "127.0.0.1:$port" --data "$DIR/$1" --nats "$NATS_URLS" --postgres "$PG" \
    --role "$2" --node-name "$1" --partitions "$PARTITIONS" "${prefer[@]}" >"$DIR/$1.log" 2>&1 &
  PIDS+=($!)
  echo "$! $port"
}
NODES=()
case $LAYOUT in
  two)
    EVEN=$(seq -s, 0 2 $((PARTITIONS - 1))); ODD=$(seq -s, 1 2 $((PARTITIONS - 1)))
    NODES+=("a $(node a edge,stage,api "$EVEN")"); sleep 1; NODES+=("b $(node b edge,stage,api "$ODD")") ;;
  split) NODES+=("edge1 $(node edge1 edge)"); sleep 1; NODES+=("edge2 $(node edge2 edge)"); NODES+=("stage $(node stage stage)") ;;
  *) echo "LAYOUT is two or split" >&2; exit 2 ;;
esac
# `node` runs in a command substitution: its PIDS+= does not reach this shell.
for n in "${NODES[@]}"; do set -- $n; PIDS+=("$2"); done
UPSTREAMS=""
for n in "${NODES[@]}"; do
  set -- $n
  wait_port "$3" "$DIR/$1.log"
  case $1 in stage) ;; *) [[ -n ${ONE_UPSTREAM:-} && -n $UPSTREAMS ]] || UPSTREAMS+="server 127.0.0.1:$3; " ;; esac
done
NGINX_PORT=$(free_port)
mkdir -p "$DIR/nginx"
cat >"$DIR/nginx.conf" <<EOF
daemon off; master_process on; worker_processes 1; user root;
pid $DIR/nginx/pid; error_log $DIR/nginx/error.log info;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx/body; proxy_temp_path $DIR/nginx/proxy;
  fastcgi_temp_path $DIR/nginx/fcgi; uwsgi_temp_path $DIR/nginx/uwsgi; scgi_temp_path $DIR/nginx/scgi;
  upstream spot { $UPSTREAMS keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 0;
    location / {
      proxy_pass http://spot; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_request_buffering off; proxy_buffering off;
      proxy_read_timeout 600s; proxy_send_timeout 600s; client_body_timeout 600s;
    }
  }
}
EOF
nginx -c "$DIR/nginx.conf" >"$DIR/nginx.out" 2>&1 &
NGINX_PID=$!; PIDS+=($NGINX_PID)
wait_port "$NGINX_PORT"
sleep 2

wal() { psql -qAtX -h 127.0.0.1 -U postgres -d "$DB" -c "select pg_current_wal_lsn() - '0/0'::pg_lsn"; }
rows() { psql -qAtX -h 127.0.0.1 -U postgres -d "$DB" -c "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del),0) from pg_stat_user_tables"; }
js_bytes() { curl -s "http://127.0.0.1:${MP[0]}/jsz?streams=true" | python3 -c "
import json,sys; d=json.load(sys.stdin); out={}
for a in d.get('account_details',[]):
  for s in a.get('stream_detail',[]): out[s['name']]=(s['state']['bytes'], s['state']['messages'])
print(json.dumps(out))"; }

declare -A C0
for n in "${NODES[@]}"; do set -- $n; C0[$1]=$(cpu "$2"); done
for i in 0 1 2; do C0[nats$i]=$(cpu "${NATS_PIDS[$i]}"); done
NGX_WORKERS=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
C0[nginx]=0; for w in $NGX_WORKERS; do C0[nginx]=$(( ${C0[nginx]} + $(cpu "$w") )); done
W0=$(wal); R0=$(rows)
TARGET=$NGINX_PORT
# DIRECT=1: the load goes to the first node, not through nginx.
if [[ -n ${DIRECT:-} ]]; then set -- ${NODES[0]}; TARGET=$3; fi
"$SPOTLOAD" --target "127.0.0.1:$TARGET" --spots "$SPOTS" --rate "$RATE" --duration "$SECS" >"$DIR/load.json" 2>"$DIR/load.log"
# The stage catches up: how long after the load every partition's position reaches the
# input log's end at that time.
LOAD_END=$(date +%s.%N)
in_last() { curl -s "http://127.0.0.1:${MP[0]}/jsz?streams=true" | python3 -c "
import json,sys; d=json.load(sys.stdin)
print(max([s['state']['last_seq'] for a in d.get('account_details',[]) for s in a.get('stream_detail',[]) if s['name']=='SPOT_IN'] or [0]))"; }
applied() { psql -qAtX -h 127.0.0.1 -U postgres -d "$DB" -c "select coalesce(min(applied_seq),0) from spot_partitions"; }
IN_END=$(in_last)
for _ in $(seq 1 600); do
  [[ $(applied) -ge $IN_END ]] && break # each partition's ticks move it on once it is there
  sleep 0.2
done
CAUGHT_UP=$(python3 -c "print(f'{$(date +%s.%N) - $LOAD_END:.1f}')")
W1=$(wal); R1=$(rows)
ACKED=$(python3 -c "import json; print(json.load(open('$DIR/load.json'))['events_acked'])")
echo "cluster ($LAYOUT) through nginx, $SPOTS spots x $RATE ev/s, $SECS s:"
python3 -c "import json; d=json.load(open('$DIR/load.json')); print(f\"  acked {d['events_acked']} ({d['events_per_s']:.0f} ev/s), ack p50 {d['ack_ms_p50']:.1f} ms, p99 {d['ack_ms_p99']:.1f} ms, errors {d['errors']}\")"
for n in "${NODES[@]}"; do set -- $n
  echo "  $1: $(python3 -c "print(f'{($(cpu "$2") - ${C0[$1]}) / $TCK / $ACKED * 1e6:.2f}')") us CPU/event"
done
for i in 0 1 2; do echo "  nats$i: $(python3 -c "print(f'{($(cpu "${NATS_PIDS[$i]}") - ${C0[nats$i]}) / $TCK / $ACKED * 1e6:.2f}')") us CPU/event"; done
NG=0; for w in $NGX_WORKERS; do NG=$(( NG + $(cpu "$w") )); done
echo "  nginx: $(python3 -c "print(f'{($NG - ${C0[nginx]}) / $TCK / $ACKED * 1e6:.2f}')") us CPU/event"
JS=$(js_bytes)
python3 -c "
import json; d=json.loads('$JS'); a=$ACKED
for k,(b,m) in sorted(d.items()): print(f'  {k}: {b/a:.0f} bytes/event, {m} messages ({a/max(m,1):.1f} events/message)')
print(f'  PostgreSQL: {($R1-$R0)/a:.2f} rows written/event, {($W1-$W0)/a:.0f} WAL bytes/event (the whole server)')"
psql -qAtX -h 127.0.0.1 -U postgres -d "$DB" -c "select '  partition ' || partition || ': position ' || applied_seq || ', owner ' || owner from spot_partitions order by partition"
echo "  the stage reached the end of the input log ${CAUGHT_UP} s after the load ended"

for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
# The embedded server, same load, same machine.
PORT=$(free_port)
"$SPOT_BIN" serve --listen "127.0.0.1:$PORT" --data "$DIR/embedded" >"$DIR/embedded.log" 2>&1 &
EPID=$!; PIDS+=($EPID)
wait_port "$PORT"; sleep 1
E0=$(cpu $EPID)
"$SPOTLOAD" --target "127.0.0.1:$PORT" --spots "$SPOTS" --rate "$RATE" --duration "$SECS" >"$DIR/embedded.json" 2>/dev/null
EA=$(python3 -c "import json; print(json.load(open('$DIR/embedded.json'))['events_acked'])")
echo "embedded, same load:"
python3 -c "import json; d=json.load(open('$DIR/embedded.json')); print(f\"  acked {d['events_acked']} ({d['events_per_s']:.0f} ev/s), ack p50 {d['ack_ms_p50']:.1f} ms, p99 {d['ack_ms_p99']:.1f} ms, errors {d['errors']}\")"
echo "  spot: $(python3 -c "print(f'{($(cpu $EPID) - $E0) / $TCK / $EA * 1e6:.2f}')") us CPU/event"
