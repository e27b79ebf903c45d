#!/usr/bin/env bash
# Side-by-side benchmark of ringcast and sockudo with `ringcast bench`, on this machine, in one
# run: each server pinned to CPU 0 (ringcast with cores = 1), the load generator on CPU 1,
# every scenario RUNS times (default 3) per server, medians reported, and beside each run the
# kernel's own floor for one loopback send (`ringcast bench floor`, no server). Writes
# target/compare/results.json and target/compare/results.md (the table in docs/BENCHMARKS.md).
#
# Needs: a release build of ringcast (built here), and sockudo on PATH or in $SOCKUDO
# (`apt-get install protobuf-compiler && cargo install sockudo`). Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
OUT=target/compare
mkdir -p "$OUT"
rm -f "$OUT"/floor-*.json "$OUT"/floorpaced-*.json
SOCKUDO=${SOCKUDO:-$(command -v sockudo || echo /work/sockudo/bin/sockudo)}
cargo build --release --quiet
RC=target/release/ringcast
PORT=6101

cat > "$OUT/ringcast.toml" <<TOML
version = 1
[server]
bind = "127.0.0.1:$PORT"
cores = 1
pin_threads = false
[log]
level = "warn"
[[apps]]
id = "123456"
key = "app-key"
secret = "app-secret"
TOML

start_server() {
  case "$1" in
    ringcast) taskset -c 0 "$RC" serve --config "$OUT/ringcast.toml" >"$OUT/server.log" 2>&1 & ;;
    sockudo)
      # sockudo's default rate limiter answers 429 to a benchmark's handshakes and publishes.
      HOST=127.0.0.1 PORT=$PORT DEBUG=false METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
      SOCKUDO_DEFAULT_APP_ID=123456 SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret \
      SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000 \
      SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=1000000 SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=1000000 \
      taskset -c 0 "$SOCKUDO" >"$OUT/server.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then sleep 0.5; return 0; fi
    sleep 0.1
  done
  echo "$1 did not start; log:" >&2; cat "$OUT/server.log" >&2; exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 0.5
}

bench() {
  local name=$1; shift
  taskset -c 1 "$RC" bench "$@" --port $PORT --server-pid "$SERVER_PID" --quiet >"$OUT/$name.json"
}

for server in ${SERVERS:-ringcast sockudo}; do
  if [ "$server" = sockudo ] && [ ! -x "$SOCKUDO" ]; then
    echo "sockudo not found (set SOCKUDO=path): skipping it" >&2
    continue
  fi
  for run in $(seq 1 "$RUNS"); do
    echo "== $server run $run" >&2
    # The kernel's own cost of one loopback send on this machine right now (no server): the
    # floor under the fan-out row, sampled beside every run because the machine's speed drifts.
    # Back to back, then paced at the fan-out scenario's 500 events per second (the sender
    # sleeping between bursts, as a server does).
    "$RC" bench floor --connections 1000 --payload 150 --batch 100 --sender-cpu 0 --reader-cpu 1 \
      --quiet >"$OUT/floor-$server-$run.json"
    "$RC" bench floor --connections 1000 --payload 150 --batch 100 --sender-cpu 0 --reader-cpu 1 \
      --sends 100000 --batch-rate 500 --quiet >"$OUT/floorpaced-$server-$run.json"
    # Fresh server per idle run: RSS per connection needs a clean heap.
    start_server "$server"
    bench "$server-idle-$run" idle --connections 5000 --connect-concurrency 100 --duration 3
    stop_server
    start_server "$server"
    bench "$server-fanout-$run" fanout --subscribers 1000 --channels 10 --payload 100 --rate 500 --duration 10
    bench "$server-storm-$run" storm --clients 5000 --channels 10
    bench "$server-publish-$run" publish --connections 16 --payload 100 --duration 5
    stop_server
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
def load(server, scenario):
    docs = []
    for run in range(1, runs + 1):
        path = f"{out}/{server}-{scenario}-{run}.json"
        if os.path.exists(path):
            docs.append(json.load(open(path)))
    return docs
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
rows = []
servers = [s for s in ("ringcast", "sockudo") if load(s, "fanout")]
table = {}
for s in servers:
    f, i, st, p = load(s, "fanout"), load(s, "idle"), load(s, "storm"), load(s, "publish")
    table[s] = {
        "fanout_cpu_us_per_delivery": med([d["server"].get("cpu_us_per_delivery") for d in f]),
        "fanout_generator_cpu_us_per_delivery": med([d["generator"].get("cpu_us_per_delivery") for d in f]),
        "fanout_deliveries_per_sec": med([d["results"]["deliveries_per_sec"] for d in f]),
        "fanout_lost": med([d["results"]["deliveries_lost"] for d in f]),
        "fanout_p50_us": med([d["results"]["latency_us"]["p50"] for d in f]),
        "fanout_p99_us": med([d["results"]["latency_us"]["p99"] for d in f]),
        "idle_bytes_per_connection": med([d["server"].get("rss_per_connection_bytes") for d in i]),
        "idle_connects_per_sec": med([d["results"]["connects_per_sec"] for d in i]),
        "idle_connect_cpu_us_per_connection": med([d["server"].get("connect_window", {}).get("cpu_us_per_connection") for d in i]),
        "storm_ms_to_all_subscribed": med([d["results"].get("time_to_all_subscribed_ms") for d in st]),
        "storm_cpu_us_per_connection": med([d["server"].get("cpu_us_per_connection") for d in st]),
        "storm_runtime_us_per_connection": med([d["server"].get("runtime_us_per_connection") for d in st]),
        "publish_per_sec": med([d["results"]["accepted_per_sec"] for d in p]),
        "publish_cpu_us_per_request": med([d["server"].get("cpu_us_per_publish") for d in p]),
    }
def floors(prefix):
    return [json.load(open(f"{out}/{name}")) for name in sorted(os.listdir(out)) if name.startswith(prefix)]
def per_send(docs, name):
    return med([d["results"][name]["sender_cpu_us_per_send"] for d in docs])
flat, paced = floors("floor-"), floors("floorpaced-")
table["kernel_floor"] = {
    "io_uring_us_per_send": per_send(flat, "io_uring"),
    "syscall_us_per_send": per_send(flat, "send_syscall"),
    "io_uring_sleeping_reader_us_per_send": per_send(flat, "io_uring_sleeping_reader"),
    "paced_io_uring_sleeping_reader_us_per_send": per_send(paced, "io_uring_sleeping_reader"),
    "samples": len(flat),
}
json.dump(table, open(f"{out}/results.json", "w"), indent=2)
labels = [
    ("fanout_cpu_us_per_delivery", "server CPU µs per delivery (1000 subs, 10 ch, 100 B, 500 pub/s)"),
    ("fanout_generator_cpu_us_per_delivery", "load generator CPU µs per delivery (same run)"),
    ("fanout_p50_us", "publish→deliver p50 µs (same run, ~50k deliveries/s)"),
    ("fanout_p99_us", "publish→deliver p99 µs (same run)"),
    ("fanout_lost", "deliveries lost (same run)"),
    ("idle_bytes_per_connection", "idle memory per connection, bytes (5000 connections)"),
    ("idle_connects_per_sec", "connections established per second (idle run, 100 handshakes in flight)"),
    ("idle_connect_cpu_us_per_connection", "server CPU µs per connection established (same run)"),
    ("storm_ms_to_all_subscribed", "storm: ms until 5000 clients are subscribed"),
    ("storm_cpu_us_per_connection", "storm: server CPU µs per connection"),
    ("storm_runtime_us_per_connection", "storm: the same from the scheduler's exact run time"),
    ("publish_per_sec", "REST publishes per second (16 keep-alive connections)"),
    ("publish_cpu_us_per_request", "server CPU µs per REST publish"),
]
lines = ["| figure (median of %d) | %s |" % (runs, " | ".join(servers)), "|---|" + "---|" * len(servers)]
for key, label in labels:
    cells = []
    for s in servers:
        v = table[s][key]
        cells.append("—" if v is None else (f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
floor = table["kernel_floor"]
if floor["samples"]:
    lines.append("")
    lines.append(
        "Kernel floor (`ringcast bench floor`, no server, median of %d): sender CPU per 150-byte "
        "loopback send: %.2f µs as io_uring sends in batches of 100 to a reader that never sleeps, "
        "%.2f µs per send(2), %.2f µs to a reader that sleeps as the generator does, and %.2f µs "
        "with that reader and the batches paced at 500 per second (the fan-out scenario's shape)."
        % (floor["samples"], floor["io_uring_us_per_send"], floor["syscall_us_per_send"],
           floor["io_uring_sleeping_reader_us_per_send"],
           floor["paced_io_uring_sleeping_reader_us_per_send"]))
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
