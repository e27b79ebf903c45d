#!/usr/bin/env bash
# The hot standby's cost and failover time (issue 13), measured in one run on this machine.
#
# A primary + standby pair on loopback (each `cores = 1`, `fsync = "interval"`, the primary
# pinned to CPU 0, the standby to CPU 1), with three apps whose `ack` is `local`, `replica` and
# `replica-durable`, so the three modes run against the same pair; and, as the reference, the
# same server alone with its WAL and no `[replication]` ("wal-only", CPU 0). The load generator
# runs on CPU 1 (beside the standby: on a 2-core box the standby's host is the generator's).
# B_CPU=0 puts the standby beside the primary instead, leaving CPU 1 to the generator alone:
# harsher for the pair, fair to the instrument (beside the standby the generator's own
# scheduling shows up as a ~4 ms p99 in every mode; docs/BENCHMARKS.md, "re-measured").
# Per round (RUNS, default 3; the modes interleaved in every round, medians reported):
#   1. `bench publish`, 16 keep-alive connections, closed loop: publishes/s, p50/p99;
#   2. the same open loop at RATE (default 10,000) publishes/s: p50/p99;
#   3. during each open-loop run, the primary's `ringcast_replication_lag_seconds` histogram
#      (per record: link read → standby's ack of receipt), scraped before and after: p50/p99.
# Then FAILOVER_RUNS (default 20) failovers, each on a fresh pair: a publisher on the primary
# (`ack = "replica"`, 2,000/s), kill -9 of the primary, at once `ringcast promote --force` on
# the standby, and a publisher retrying on the standby's port until its first 200: the time
# from the kill to that 200.
#
# Data lives under DATA (default: a fresh directory under /var/tmp, the machine's disk, so
# fsync costs what it costs here). Writes target/replication-compare/results.{json,md}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
FAILOVER_RUNS=${FAILOVER_RUNS:-20}
RATE=${RATE:-10000}
OPEN_CONNECTIONS=${OPEN_CONNECTIONS:-256}
# CPUs: the primary (and the wal-only reference), the standby, the load generator.
A_CPU=${A_CPU:-0}
B_CPU=${B_CPU:-1}
GEN_CPU=${GEN_CPU:-1}
# The standby's `[storage] fsync` (the primary and the reference keep "interval").
STANDBY_FSYNC=${STANDBY_FSYNC:-interval}
SECS=${SECS:-5}
DATA=${DATA:-$(mktemp -d /var/tmp/ringcast-repl-compare.XXXXXX)}
OUT=${OUT:-target/replication-compare}
rm -rf "$OUT"
mkdir -p "$OUT"
cargo build --release --quiet
RC=target/release/ringcast
# Ports: client (REST), replication, admin, metrics; primary "a" and standby "b".
A_PORT=6121 B_PORT=6122 A_REPL=6131 B_REPL=6132 A_ADMIN=6141 B_ADMIN=6142 A_METRICS=6151
SECRET=replication-compare-secret
MODES=(local replica replica-durable)
declare -A APP=([local]=1001 [replica]=1002 [replica-durable]=1003)

apps() { # with_ack
  for mode in "${MODES[@]}"; do
    printf '[[apps]]\nid = "%s"\nkey = "key-%s"\nsecret = "secret-%s"\n' \
      "${APP[$mode]}" "${APP[$mode]}" "${APP[$mode]}"
    if [ "$1" = yes ]; then printf 'ack = "%s"\n' "$mode"; fi
    printf '\n'
  done
}

config() { # name port dir metrics_port [role repl peer_repl admin]
  local name=$1 port=$2 dir=$3 metrics=$4 fsync=interval
  if [ "$name" = b ]; then fsync=$STANDBY_FSYNC; fi
  {
    printf 'version = 1\n[server]\nbind = "127.0.0.1:%s"\ncores = 1\npin_threads = false\n' "$port"
    printf '[log]\nlevel = "info"\n'
    if [ -n "$metrics" ]; then printf '[metrics]\nbind = "127.0.0.1:%s"\n' "$metrics"; fi
    printf '[storage]\ndir = "%s"\nfsync = "%s"\n' "$dir" "$fsync"
    if [ $# -gt 4 ]; then
      printf '[replication]\nnode_id = "%s"\nlisten = "127.0.0.1:%s"\npeer = "127.0.0.1:%s"\n' \
        "$name" "$6" "$7"
      printf 'initial_role = "%s"\nsecret = "%s"\nack = "replica"\n' "$5" "$SECRET"
      printf 'standby_timeout_ms = 1000\non_standby_loss = "degrade"\n'
      printf '[admin]\nbind = "127.0.0.1:%s"\n' "$8"
      apps yes
    else
      apps no
    fi
  } >"$OUT/$name.toml"
}

wait_port() { # port log
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1; log:" >&2; cat "$2" >&2; exit 1
}

start() { # name cpu -> sets PID_<name>
  taskset -c "$2" "$RC" serve --config "$OUT/$1.toml" >>"$OUT/server-$1.log" 2>&1 &
  printf -v "PID_$1" '%s' "$!"
}

stop() { # pid...
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

start_pair() {
  rm -rf "${DATA:?}/a" "${DATA:?}/b"
  config a $A_PORT "$DATA/a" $A_METRICS primary $A_REPL $B_REPL $A_ADMIN
  config b $B_PORT "$DATA/b" "" standby $B_REPL $A_REPL $B_ADMIN
  start a "$A_CPU"
  start b "$B_CPU"
  wait_port $A_PORT "$OUT/server-a.log"
  wait_port $B_PORT "$OUT/server-b.log"
  for _ in $(seq 1 400); do
    if curl -s "http://127.0.0.1:$A_ADMIN/replication" | grep -q '"in_sync":true'; then
      sleep 0.3
      return 0
    fi
    sleep 0.05
  done
  echo "the standby did not get in sync" >&2; cat "$OUT/server-b.log" >&2; exit 1
}

bench() { # name port app server_pid connections args...
  local name=$1 port=$2 app=$3 pid=$4 connections=$5; shift 5
  taskset -c "$GEN_CPU" "$RC" bench publish --port "$port" --app-id "$app" --key "key-$app" \
    --secret "secret-$app" --server-pid "$pid" --connections "$connections" --payload 100 \
    --duration "$SECS" --quiet "$@" >"$OUT/$name.json"
}

scrape_lag() { # file
  curl -s "http://127.0.0.1:$A_METRICS/metrics" | grep '^ringcast_replication_lag' >"$1" || true
}

for run in $(seq 1 "$RUNS"); do
  echo "== round $run: wal-only" >&2
  rm -rf "${DATA:?}/ref"
  config ref $A_PORT "$DATA/ref" ""
  start ref "$A_CPU"
  wait_port $A_PORT "$OUT/server-ref.log"
  sleep 0.3
  bench "wal-only-closed-$run" $A_PORT 1001 "$PID_ref" 16
  bench "wal-only-open-$run" $A_PORT 1001 "$PID_ref" "$OPEN_CONNECTIONS" --rate "$RATE"
  stop "$PID_ref"
  echo "== round $run: pair" >&2
  start_pair
  for mode in "${MODES[@]}"; do
    bench "$mode-closed-$run" $A_PORT "${APP[$mode]}" "$PID_a" 16
  done
  for mode in "${MODES[@]}"; do
    scrape_lag "$OUT/$mode-lag-before-$run.txt"
    bench "$mode-open-$run" $A_PORT "${APP[$mode]}" "$PID_a" "$OPEN_CONNECTIONS" --rate "$RATE"
    scrape_lag "$OUT/$mode-lag-after-$run.txt"
  done
  stop "$PID_a" "$PID_b"
done

# Failover: kill -9 the primary under load, promote the standby at once, first 200 on it.
for run in $(seq 1 "$FAILOVER_RUNS"); do
  echo "== failover $run" >&2
  start_pair
  taskset -c "$GEN_CPU" "$RC" bench publish --port $A_PORT --app-id 1002 --key key-1002 \
    --secret secret-1002 --connections 4 --rate 2000 --duration 30 --quiet \
    >"$OUT/failover-load-$run.json" 2>/dev/null &
  LOAD=$!
  sleep 1
  taskset -c "$GEN_CPU" python3 - "$PID_a" "$RC" 127.0.0.1:$B_ADMIN $B_PORT >"$OUT/failover-$run.json" <<'PY'
import hashlib, hmac, json, os, signal, socket, subprocess, sys, time
pid, rc, admin, port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
app, key, secret = "1002", "key-1002", b"secret-1002"
def publish():
    body = json.dumps({"name": "failover", "channels": ["after"], "data": "x"}).encode()
    params = (f"auth_key={key}&auth_timestamp={int(time.time())}&auth_version=1.0"
              f"&body_md5={hashlib.md5(body).hexdigest()}")
    path = f"/apps/{app}/events"
    signature = hmac.new(secret, f"POST\n{path}\n{params}".encode(), hashlib.sha256).hexdigest()
    request = (f"POST {path}?{params}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n\r\n").encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(request)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    except OSError:
        return 0, ""
    head = reply.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    status = int(head[0].split()[1]) if head and len(head[0].split()) > 1 else 0
    durability = next((line.split(": ", 1)[1] for line in head
                       if line.lower().startswith("x-ringcast-durability")), "")
    return status, durability
killed = time.monotonic()
os.kill(pid, signal.SIGKILL)
promote = subprocess.Popen([rc, "promote", "--admin", admin, "--force"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
attempts, statuses = 0, {}
while True:
    status, durability = publish()
    attempts += 1
    statuses[status] = statuses.get(status, 0) + 1
    if status == 200:
        first_ok = time.monotonic()
        break
    if time.monotonic() - killed > 10:
        first_ok = None
        break
out, err = promote.communicate(timeout=10)
promoted = time.monotonic()
try:
    answer = json.loads(out)
    took_ms, store_ms = answer["took_ms"], answer.get("epoch_store_ms")
except (ValueError, KeyError):
    took_ms, store_ms = None, None
print(json.dumps({
    "kill_to_first_200_ms": None if first_ok is None else round((first_ok - killed) * 1e3, 2),
    "kill_to_promote_exit_ms": round((promoted - killed) * 1e3, 2),
    "promote_took_ms": took_ms, "epoch_store_ms": store_ms, "promote_stderr": err.decode(errors="replace").strip(),
    "attempts": attempts, "statuses": statuses, "durability": durability,
}))
PY
  cat "$OUT/failover-$run.json" >&2
  kill "$LOAD" 2>/dev/null || true
  wait "$LOAD" 2>/dev/null || true
  stop "$PID_b"
  wait "$PID_a" 2>/dev/null || true
done
rm -rf "${DATA:?}"

python3 - "$OUT" "$RUNS" "$FAILOVER_RUNS" "$RATE" <<'PY'
import json, os, re, statistics, sys
out, runs, failovers, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
MODES = ("wal-only", "local", "replica", "replica-durable")
def load(name):
    path = f"{out}/{name}.json"
    return json.load(open(path)) if os.path.exists(path) else None
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def buckets(path):
    counts = {}
    for line in open(path) if os.path.exists(path) else []:
        m = re.match(r'ringcast_replication_lag_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
        if m:
            counts[float(m.group(1))] = int(m.group(2))
    return counts
def lag_quantiles(before, after):
    """p50/p99 (µs, linear within a bucket) of the records counted between two scrapes."""
    diff = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = diff[-1][1] if diff else 0
    if total == 0:
        return None, None, 0
    result = []
    for q in (0.5, 0.99):
        want, lower, below = q * total, 0.0, 0
        for le, cumulative in diff:
            if cumulative >= want:
                if le == float("inf"):
                    result.append(float("inf"))
                else:
                    share = (want - below) / max(cumulative - below, 1)
                    result.append((lower + share * (le - lower)) * 1e6)
                break
            lower, below = le, cumulative
    return result[0], result[1], total
table, per_run = {}, {}
for mode in MODES:
    closed = [load(f"{mode}-closed-{r}") for r in range(1, runs + 1)]
    opened = [load(f"{mode}-open-{r}") for r in range(1, runs + 1)]
    lags = [lag_quantiles(buckets(f"{out}/{mode}-lag-before-{r}.txt"),
                          buckets(f"{out}/{mode}-lag-after-{r}.txt")) for r in range(1, runs + 1)]
    get = lambda docs, f: [f(d) for d in docs if d]
    per_run[mode] = {"closed_per_sec": get(closed, lambda d: d["results"]["accepted_per_sec"])}
    table[mode] = {
        "closed_per_sec": med(per_run[mode]["closed_per_sec"]),
        "closed_p50_us": med(get(closed, lambda d: d["results"]["latency_us"]["p50"])),
        "closed_p99_us": med(get(closed, lambda d: d["results"]["latency_us"]["p99"])),
        "closed_cpu_us": med(get(closed, lambda d: d["server"].get("cpu_us_per_publish"))),
        "closed_refused": sum(get(closed, lambda d: d["results"]["requests_sent"] - d["results"]["accepted"])),
        "open_per_sec": med(get(opened, lambda d: d["results"]["accepted_per_sec"])),
        "open_p50_us": med(get(opened, lambda d: d["results"]["latency_us"]["p50"])),
        "open_p99_us": med(get(opened, lambda d: d["results"]["latency_us"]["p99"])),
        "open_max_us": med(get(opened, lambda d: d["results"]["latency_us"].get("max"))),
        "lag_p50_us": None if mode == "wal-only" else med([l[0] for l in lags]),
        "lag_p99_us": None if mode == "wal-only" else med([l[1] for l in lags]),
        "lag_records": None if mode == "wal-only" else sum(l[2] for l in lags),
    }
# Ratios to `local` within each round, then their median.
ratios = {}
for mode in MODES:
    pairs = zip(per_run[mode]["closed_per_sec"], per_run["local"]["closed_per_sec"])
    ratios[mode] = med([a / b for a, b in pairs if b])
    table[mode]["closed_ratio_to_local"] = ratios[mode]
fails = [load(f"failover-{r}") for r in range(1, failovers + 1)]
times = sorted(f["kill_to_first_200_ms"] for f in fails if f and f["kill_to_first_200_ms"] is not None)
def pct(values, q):
    return values[min(len(values) - 1, int(q * len(values)))] if values else None
table["failover"] = {
    "runs": len(times), "failed": failovers - len(times),
    "p50_ms": statistics.median(times) if times else None, "p99_ms": pct(times, 0.99),
    "max_ms": times[-1] if times else None, "all_ms": times,
    "promote_took_ms": sorted(f["promote_took_ms"] for f in fails if f and f["promote_took_ms"] is not None),
    "epoch_store_ms": sorted(f.get("epoch_store_ms") for f in fails if f and f.get("epoch_store_ms") is not None),
    "durability": sorted({f["durability"] for f in fails if f}),
}
json.dump(table, open(f"{out}/results.json", "w"), indent=2)
def cell(v, fmt="{:,.0f}"):
    return "—" if v is None else fmt.format(v)
rows = [
    ("closed_per_sec", f"REST publishes/s (16 connections, closed loop)", "{:,.0f}"),
    ("closed_ratio_to_local", "… ratio to `local` (same round, median)", "{:.2f}"),
    ("closed_p50_us", "closed loop p50 µs", "{:,.0f}"),
    ("closed_p99_us", "closed loop p99 µs", "{:,.0f}"),
    ("closed_cpu_us", "primary CPU µs per publish (closed loop)", "{:.1f}"),
    ("open_per_sec", f"open loop at {rate:,}/s: accepted/s", "{:,.0f}"),
    ("open_p50_us", f"open loop at {rate:,}/s: p50 µs", "{:,.0f}"),
    ("open_p99_us", f"open loop at {rate:,}/s: p99 µs", "{:,.0f}"),
    ("lag_p50_us", f"replication lag at {rate:,}/s: p50 µs", "{:,.0f}"),
    ("lag_p99_us", f"replication lag at {rate:,}/s: p99 µs", "{:,.0f}"),
]
lines = [f"| figure (median of {runs}) | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
for key, label, fmt in rows:
    lines.append(f"| {label} | " + " | ".join(cell(table[m][key], fmt) for m in MODES) + " |")
f = table["failover"]
lines += ["", f"Kill → first 200 on the promoted node ({f['runs']} runs, {f['failed']} without a 200 "
          f"in 10 s): p50 {cell(f['p50_ms'], '{:.1f}')} ms, p99 {cell(f['p99_ms'], '{:.1f}')} ms, "
          f"max {cell(f['max_ms'], '{:.1f}')} ms; all: {f['all_ms']}; promotion's own took_ms: "
          f"{f['promote_took_ms']}; of which the epoch file's syncs: {f['epoch_store_ms']}; first 200 said {f['durability']}."]
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
