#!/usr/bin/env bash
# `fsync = "always"` against this disk's own floor, in one run: per round, first the floor
# (`benches/fsync_floor.rs`: 16 threads appending 256 bytes and waiting for one syncer thread's
# fdatasync, ideal group commit, no server, no network), then ringcast with `fsync = "always"`
# (cores = 1 on CPU 0, `ringcast bench publish` with 16 keep-alive connections on CPU 1, closed
# loop). RUNS rounds (default 3); medians and the ratio taken within each round. The floor's
# syncs per second give the back-to-back sync period P, and with it the most 16 closed-loop
# publishers behind a network round trip can get from group commit with zero server overhead:
# 16 / (2 P) (see the comment in the report below).
#
# With TRACE=1 (root and perf(1) needed) each ringcast run also records the kernel's
# ext4_sync_file_enter/exit events for half a second: how long each fdatasync took, and the gap
# from one sync's end to the next one's start (the time the log was not syncing while
# publishers waited). Writes target/always-floor/results.md. Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
DATA=${DATA:-/var/tmp/ringcast-always-floor}
TRACE=${TRACE:-0}
OUT=target/always-floor
PORT=6112
mkdir -p "$OUT" "$DATA"
cargo build --release --quiet
cargo bench --bench fsync_floor --no-run --quiet 2>/dev/null
RC=target/release/ringcast

cat >"$OUT/always.toml" <<TOML
version = 1
[server]
bind = "127.0.0.1:$PORT"
cores = 1
pin_threads = false
[log]
level = "info"
[storage]
dir = "$DATA/log"
fsync = "always"
[[apps]]
id = "123456"
key = "app-key"
secret = "app-secret"
TOML

gaps() { # perf.data -> "sync_mean_us gap_mean_us syncs"
  perf script -i "$1" -F time,event 2>/dev/null | python3 -c '
import re, sys
enter = last_exit = None
durs, gaps = [], []
for line in sys.stdin:
    m = re.search(r"([\d.]+):\s+ext4:ext4_sync_file_(enter|exit)", line)
    if not m:
        continue
    t = float(m.group(1)) * 1e6
    if m.group(2) == "enter":
        if last_exit is not None:
            gaps.append(t - last_exit)
        enter = t
    elif enter is not None:
        durs.append(t - enter)
        last_exit, enter = t, None
mean = lambda v: sum(v) / len(v) if v else 0
print(f"{mean(durs):.0f} {mean(gaps):.0f} {len(durs)}")'
}

for run in $(seq 1 "$RUNS"); do
  echo "== round $run: floor" >&2
  cargo bench --bench fsync_floor --quiet -- "$DATA" "$SECONDS_PER_RUN" 16 2>/dev/null \
    | awk -F'|' '/zero-filled/ {gsub(/ /, "", $4); gsub(/ /, "", $5); print $4, $5}' >"$OUT/floor-$run.txt"
  # The floor's 1 GiB probe file was zero-filled and removed: let its writeback and discard
  # finish before ringcast's syncs share the disk.
  sync
  sleep 3
  echo "== round $run: ringcast" >&2
  rm -rf "${DATA:?}/log"
  taskset -c 0 "$RC" serve --config "$OUT/always.toml" >"$OUT/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep 0.5
  taskset -c 1 "$RC" bench publish --connections 16 --payload 100 --duration "$SECONDS_PER_RUN" \
    --port $PORT --server-pid "$server" --quiet >"$OUT/ringcast-$run.json" &
  generator=$!
  if [ "$TRACE" = 1 ]; then
    sleep $((SECONDS_PER_RUN / 2))
    perf record -q -a -o "$OUT/perf-$run.data" -e ext4:ext4_sync_file_enter \
      -e ext4:ext4_sync_file_exit -- sleep 0.5 >/dev/null 2>&1 || true
    gaps "$OUT/perf-$run.data" >"$OUT/gaps-$run.txt" || true
  fi
  wait "$generator"
  kill "$server"
  wait "$server" 2>/dev/null || true
done
rm -rf "${DATA:?}/log"
rmdir "$DATA" 2>/dev/null || true

python3 - "$OUT" "$RUNS" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
rows = []
for run in range(1, runs + 1):
    floor, floor_syncs = map(float, open(f"{out}/floor-{run}.txt").read().split()[:2])
    # A request answered by sync k is never in sync k+1, which starts the moment k ends and
    # so covers only what was written before that; its publisher's next request waits for
    # sync k+2. At best, with no server overhead: 16 publishers / (2 back-to-back periods).
    ceiling = 16 * floor_syncs / 2
    data = json.load(open(f"{out}/ringcast-{run}.json"))
    ringcast = data["results"]["accepted_per_sec"]
    gaps = f"{out}/gaps-{run}.txt"
    sync, gap, syncs = (open(gaps).read().split() + ["", "", ""])[:3] if os.path.exists(gaps) else ("", "", "")
    rows.append((run, floor, 1e6 / floor_syncs, ceiling, ringcast, ringcast / ceiling,
                 data["results"]["latency_us"]["p50"], sync, gap))
lines = ["| round | floor appends/s (16 writers) | floor sync period µs | ceiling 16 / (2 periods) | ringcast always publishes/s (16 connections) | ringcast / ceiling | ringcast p50 µs | ringcast fdatasync mean µs | ringcast gap between syncs mean µs |",
         "|---|---|---|---|---|---|---|---|---|"]
for run, floor, period, ceiling, ringcast, ratio, p50, sync, gap in rows:
    lines.append(f"| {run} | {floor:,.0f} | {period:.0f} | {ceiling:,.0f} | {ringcast:,.0f} | {ratio:.2f} | {p50} | {sync} | {gap} |")
median = lambda i: statistics.median(r[i] for r in rows)
lines.append(f"| median | {median(1):,.0f} | {median(2):.0f} | {median(3):,.0f} | {median(4):,.0f} | {median(5):.2f} | | | |")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
