#!/usr/bin/env bash
# The write-ahead log's cost, measured in one run on this machine: ringcast (cores = 1, pinned to
# CPU 0) with the WAL off, with `fsync = "interval"` and with `fsync = "always"`, the load
# generator on CPU 1; per mode, REST publishes (16 keep-alive connections, closed loop) and the
# fan-out scenario; the modes interleaved in every round (RUNS rounds, default 3) so the
# machine's drift hits them alike; medians reported. Then the replay: a log of at least
# REPLAY_RECORDS records (default 1,000,000) is written by a publish run and the server is
# restarted on it; its own log line says how long the replay took.
#
# The WAL lives on the machine's disk (DATA, default /var/tmp), not on tmpfs, so fsync costs
# what it costs here. Writes target/wal-compare/results.{json,md}. Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
DATA=${DATA:-/var/tmp/ringcast-wal-compare}
REPLAY_RECORDS=${REPLAY_RECORDS:-1000000}
OUT=target/wal-compare
mkdir -p "$OUT"
cargo build --release --quiet
RC=target/release/ringcast
PORT=6111

config() { # mode
  local storage=""
  case "$1" in
    off) ;;
    interval) storage=$'[storage]\ndir = "'"$DATA/$1"$'"\nfsync = "interval"' ;;
    always) storage=$'[storage]\ndir = "'"$DATA/$1"$'"\nfsync = "always"' ;;
  esac
  cat > "$OUT/$1.toml" <<TOML
version = 1
[server]
bind = "127.0.0.1:$PORT"
cores = 1
pin_threads = false
[log]
level = "info"
$storage
[[apps]]
id = "123456"
key = "app-key"
secret = "app-secret"
TOML
}

start_server() { # mode
  taskset -c 0 "$RC" serve --config "$OUT/$1.toml" >"$OUT/server-$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then sleep 0.5; return 0; fi
    sleep 0.1
  done
  echo "ringcast ($1) did not start; log:" >&2; cat "$OUT/server-$1.log" >&2; exit 1
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

for run in $(seq 1 "$RUNS"); do
  for mode in off interval always; do
    echo "== $mode run $run" >&2
    rm -rf "${DATA:?}/$mode"
    config "$mode"
    start_server "$mode"
    bench "$mode-publish-$run" publish --connections 16 --payload 100 --duration 5
    bench "$mode-fanout-$run" fanout --subscribers 1000 --channels 10 --payload 100 --rate 500 --duration 10
    stop_server
  done
done

# Replay: write at least REPLAY_RECORDS records with fsync = "interval", then restart on them.
echo "== replay" >&2
rm -rf "${DATA:?}/interval"
config interval
start_server interval
records=0
while [ "$records" -lt "$REPLAY_RECORDS" ]; do
  bench replay-load publish --connections 16 --channels 1000 --payload 100 --duration 10
  records=$((records + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"]["accepted"])' "$OUT/replay-load.json")))
done
stop_server
start_server interval
stop_server
grep "write-ahead log replayed" "$OUT/server-interval.log" | tail -1 >"$OUT/replay.log"

python3 - "$OUT" "$RUNS" <<'PY'
import json, re, statistics, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
def load(mode, scenario):
    return [json.load(open(f"{out}/{mode}-{scenario}-{run}.json")) for run in range(1, runs + 1)
            if os.path.exists(f"{out}/{mode}-{scenario}-{run}.json")]
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
table = {}
for mode in ("off", "interval", "always"):
    p, f = load(mode, "publish"), load(mode, "fanout")
    table[mode] = {
        "publish_per_sec": med([d["results"]["accepted_per_sec"] for d in p]),
        "publish_cpu_us": med([d["server"].get("cpu_us_per_publish") for d in p]),
        "publish_p50_us": med([d["results"]["latency_us"]["p50"] for d in p]),
        "publish_p99_us": med([d["results"]["latency_us"]["p99"] for d in p]),
        "fanout_cpu_us_per_delivery": med([d["server"].get("cpu_us_per_delivery") for d in f]),
        "fanout_lost": med([d["results"]["deliveries_lost"] for d in f]),
    }
line = open(f"{out}/replay.log").read()
fields = dict(re.findall(r"(\w+)\W*=\W*(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", line)))
table["replay"] = {"records": int(fields.get("records", 0)), "ms": int(fields.get("ms", 0))}
json.dump(table, open(f"{out}/results.json", "w"), indent=2)
rows = [
    ("publish_per_sec", "REST publishes per second (16 connections, closed loop)"),
    ("publish_cpu_us", "server CPU µs per REST publish"),
    ("publish_p50_us", "publish round trip p50 µs"),
    ("publish_p99_us", "publish round trip p99 µs"),
    ("fanout_cpu_us_per_delivery", "fan-out server CPU µs per delivery (1000 subs, 10 ch, 500 pub/s)"),
    ("fanout_lost", "fan-out deliveries lost"),
]
lines = [f"| figure (median of {runs}) | WAL off | interval | always |", "|---|---|---|---|"]
for key, label in rows:
    cells = []
    for mode in ("off", "interval", "always"):
        v = table[mode][key]
        cells.append("—" if v is None else (f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
r = table["replay"]
lines.append("")
lines.append(f"Replay at start: {r['records']:,} records in {r['ms']:,} ms (one core).")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
