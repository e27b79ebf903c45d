#!/usr/bin/env bash
# Native TLS against plain ws and against HAProxy terminating TLS in front of plain ringcast, in
# one run, on this machine, with `ringcast bench`: the server (ringcast with cores = 1, and
# HAProxy with one thread when it is in front) pinned to CPU 0, the load generator on CPU 1,
# every scenario RUNS times (default 3) per setup, medians reported. Three setups:
#   ws       ringcast, plain listener
#   wss      ringcast, its own TLS listener (`ringcast bench --tls --ca`)
#   haproxy  HAProxy (`mode http`, `http-no-delay`, WebSocket tunnels) terminating TLS (ALPN http/1.1) → ringcast's plain listener; the
#            server CPU is both processes' together (`--server-pid` is ringcast's; HAProxy's
#            utime + stime over the same window is added from /proc)
# Figures: fan-out server CPU µs per delivery, and idle memory per connection (fresh server).
# Writes target/tls-compare/results.json and results.md (the table in docs/BENCHMARKS.md).
#
# Needs: openssl, a release build (built here), and haproxy on PATH (`apt-get install haproxy`;
# skipped with a note when missing). Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
OUT=target/tls-compare
mkdir -p "$OUT"
rm -f "$OUT"/*.json
cargo build --release --quiet
RC=target/release/ringcast
PLAIN=6201
TLS=6202
PROXY=6203

# A test CA and a certificate for 127.0.0.1, as the tests make them.
(
  cd "$OUT"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
    -out ca.pem -days 30 -subj "/CN=ringcast bench CA" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
    -out server.csr -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
    -days 30 -extfile san.cnf 2>/dev/null
  cat server.pem server.key >haproxy.pem
)

cat >"$OUT/ringcast.toml" <<TOML
version = 1
[server]
bind = "127.0.0.1:$PLAIN"
cores = 1
pin_threads = false
[tls]
bind = "127.0.0.1:$TLS"
cert = "$PWD/$OUT/server.pem"
key = "$PWD/$OUT/server.key"
[log]
level = "warn"
[[apps]]
id = "123456"
key = "app-key"
secret = "app-secret"
TOML

cat >"$OUT/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 9000                     # 5000 idle clients, two descriptors each
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-no-delay              # no MSG_MORE batching: it added 100 ms to every delivery
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend tls
  bind 127.0.0.1:$PROXY ssl crt $PWD/$OUT/haproxy.pem alpn http/1.1
  default_backend ringcast
backend ringcast
  server ringcast 127.0.0.1:$PLAIN
CFG

HAPROXY=${HAPROXY:-$(command -v haproxy || true)}
SETUPS=${SETUPS:-ws wss haproxy}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

start() {
  taskset -c 0 "$RC" serve --config "$OUT/ringcast.toml" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port $PLAIN
  PROXY_PID=
  if [ "$1" = haproxy ]; then
    taskset -c 0 "$HAPROXY" -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
    PROXY_PID=$!
    wait_port $PROXY
  fi
  sleep 0.5
}

stop() {
  for pid in ${PROXY_PID:-} ${SERVER_PID:-}; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PROXY_PID=
  SERVER_PID=
  sleep 0.5
}
trap stop EXIT

# utime + stime of a process in clock ticks (0 when there is none).
ticks() {
  if [ -z "${1:-}" ]; then echo 0; return; fi
  awk '{print $14 + $15}' "/proc/$1/stat"
}

bench() {
  local setup=$1 name=$2; shift 2
  local target=(--port $PLAIN)
  case "$setup" in
    wss) target=(--port $TLS --tls --ca "$OUT/ca.pem") ;;
    haproxy) target=(--port $PROXY --tls --ca "$OUT/ca.pem") ;;
  esac
  local before after
  before=$(ticks "$PROXY_PID")
  taskset -c 1 "$RC" bench "$@" "${target[@]}" --server-pid "$SERVER_PID" --quiet >"$OUT/$name.json"
  after=$(ticks "$PROXY_PID")
  echo "$((after - before))" >"$OUT/$name.proxy-ticks"
}

for setup in $SETUPS; do
  if [ "$setup" = haproxy ] && [ -z "$HAPROXY" ]; then
    echo "haproxy not found (apt-get install haproxy, or HAPROXY=path): skipping it" >&2
    continue
  fi
  for run in $(seq 1 "$RUNS"); do
    echo "== $setup run $run" >&2
    start "$setup"
    bench "$setup" "$setup-idle-$run" idle --connections 5000 --connect-concurrency 100 --duration 3
    stop
    start "$setup"
    bench "$setup" "$setup-fanout-$run" fanout --subscribers 1000 --channels 10 --payload 100 \
      --rate 500 --duration 10
    stop
  done
done

python3 - "$OUT" "$RUNS" "$(getconf CLK_TCK)" <<'PY'
import json, os, statistics, sys
out, runs, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def runs_of(setup, scenario):
    docs = []
    for run in range(1, runs + 1):
        path = f"{out}/{setup}-{scenario}-{run}.json"
        if os.path.exists(path):
            doc = json.load(open(path))
            doc["proxy_cpu_secs"] = int(open(path.replace(".json", ".proxy-ticks")).read()) / hz
            docs.append(doc)
    return docs
def cpu_us_per_delivery(doc):
    delivered = doc["results"]["deliveries_received"]
    cpu = doc["server"].get("cpu_secs")
    if not delivered or cpu is None:
        return None
    return (cpu + doc["proxy_cpu_secs"]) * 1e6 / delivered
table = {}
for setup in ("ws", "wss", "haproxy"):
    fanout, idle = runs_of(setup, "fanout"), runs_of(setup, "idle")
    if not fanout:
        continue
    table[setup] = {
        "cpu_us_per_delivery": med([cpu_us_per_delivery(d) for d in fanout]),
        "lost": med([d["results"]["deliveries_lost"] for d in fanout]),
        "p50_us": med([d["results"]["latency_us"]["p50"] for d in fanout]),
        "p99_us": med([d["results"]["latency_us"]["p99"] for d in fanout]),
        "idle_bytes_per_connection": med([d["server"].get("rss_per_connection_bytes") for d in idle]),
        "idle_proxy_note": "ringcast's RSS only" if setup == "haproxy" else "",
    }
base = table.get("ws", {}).get("cpu_us_per_delivery")
for setup, row in table.items():
    row["cpu_ratio_to_ws"] = row["cpu_us_per_delivery"] / base if base and row["cpu_us_per_delivery"] else None
json.dump(table, open(f"{out}/results.json", "w"), indent=2)
setups = list(table)
lines = ["| figure (median of %d) | %s |" % (runs, " | ".join(setups)), "|---|" + "---|" * len(setups)]
for key, label in [
    ("cpu_us_per_delivery", "server CPU µs per delivery (1000 subs, 10 ch, 100 B, 500 pub/s; haproxy: both processes)"),
    ("cpu_ratio_to_ws", "ratio to plain ws (same run)"),
    ("p50_us", "publish→deliver p50 µs"),
    ("p99_us", "publish→deliver p99 µs"),
    ("lost", "deliveries lost"),
    ("idle_bytes_per_connection", "idle memory per connection, bytes (5000; haproxy: ringcast's only)"),
]:
    cells = []
    for s in setups:
        v = table[s][key]
        cells.append("—" if v is None else (f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
