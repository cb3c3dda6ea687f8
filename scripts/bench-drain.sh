#!/usr/bin/env bash
# Drain benchmark: a backlog of QoS 1 VCD envelopes parked in mosquitto for a
# persistent session, drained by the release gapless binary (into SQLite and
# a file sink) and, in the same run, by `mosquitto_sub -q QOS -c` (which acks
# at once and writes nowhere). Reports per run:
#   - both rates and their ratio;
#   - gapless's CPU per event (user + system, from `perf stat`'s task-clock);
#   - the serial limit 1/(1/C + 1/S): S is mosquitto_sub's rate, C the rate of
#     20-row commits to a SQLite file in the same directory with the same
#     pragmas (examples/bench_commit), and gapless's ratio to it;
#   - WAL bytes per event (frames counted as SQLite's 24-byte frame-header
#     writes, times page size + 24) beside the stored row (the event row's
#     column bytes), and their ratio;
#   - peak RSS (and its file-backed part, mostly the binary's mapped code,
#     from /proc/PID/status at the highest sampled VmRSS) and peak WAL size.
# The median of the runs is the figure.
# GAPLESS_BIN=path runs another gapless binary (e.g. an older build) instead.
# PERF_DATA=path also records a profile of gapless's drain (`perf record
# --call-graph dwarf`; the last run's is kept) for `perf report -i path`.
#
# Usage: scripts/bench-drain.sh [--store postgres] [EVENTS] [RUNS] [SYNCHRONOUS] [PROFILE] [WINDOW] [QOS]
#   --store postgres  the store is a Postgres server of the bench's own
#                (initdb + pg_ctl in the work directory, fsync on, as the
#                `postgres` user when run as root), emptied before each run;
#                the SQLite-only columns (WAL, commit probe) show "-", and
#                the server's own CPU per event (utime + stime of its
#                processes) is reported beside gapless's
#   EVENTS       backlog size (default 200000)
#   RUNS         repetitions (default 3)
#   SYNCHRONOUS  gapless store.synchronous: full (default) or normal
#   PROFILE      vcd (default); scaleit (Pacman gameover bodies validated
#                against a draft-06 schema from schema_dir); scaleit-off (the
#                same bodies, no schema, require_schema = false)
#   WINDOW       mosquitto's max_inflight_messages (default 20, its own
#                default); also the rows per commit of the C probe
#   QOS          1 (default) or 2: the backlog is published, and both
#                consumers subscribe, at this QoS (gapless's mqtt.qos)
# Needs: mosquitto, mosquitto-clients, python3, perf (linux-perf; syscall
# tracepoints, so root or perf_event_paranoid <= -1); builds the gapless binary and
# examples/publish_lines (a QoS 1 publisher; `mosquitto_pub -l` drops messages
# when fed a large file at full speed).
set -euo pipefail

STORE=sqlite
if [ "${1:-}" = --store ]; then
  STORE=$2
  shift 2
fi
case $STORE in sqlite | postgres) ;; *) echo "bench-drain: --store sqlite or postgres, not $STORE" >&2; exit 2 ;; esac
EVENTS=${1:-200000}
RUNS=${2:-3}
SYNC=${3:-full}
PROFILE=${4:-vcd}
WINDOW=${5:-20}
QOS=${6:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
need bench-drain "mosquitto mosquitto-clients python3 linux-perf" mosquitto mosquitto_sub python3 perf

echo "building the release binary..." >&2
cargo build --release -q --bin gapless --example publish_lines --example bench_commit
GAPLESS="$ROOT/target/release/gapless"
PUBLISH="$ROOT/target/release/examples/publish_lines"
COMMIT="$ROOT/target/release/examples/bench_commit"

WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  pg_stop "$WORK"
  rm -rf "$WORK"
}
trap cleanup EXIT

PSQL=
if [ "$STORE" = postgres ]; then
  pg_start "$WORK"
fi
# CPU seconds (user + system) of the Postgres server's processes so far.
pg_cpu_s() {
  [ -n "$PSQL" ] || { echo 0; return; }
  python3 - "$WORK/pg/data/postmaster.pid" <<'PY'
import os, sys
root = int(open(sys.argv[1]).readline())
tck = os.sysconf("SC_CLK_TCK")
total = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(pid) == root or int(f[1]) == root:
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
print(total / tck)
PY
}

# The backlog: one message per line (publish_lines sends one message per line).
if [ "$PROFILE" = vcd ]; then
TOPIC=publish/org/user
FILTER='publish/#'
python3 - "$EVENTS" > "$WORK/envelopes.txt" <<'PY'
import json, sys, uuid, datetime
n = int(sys.argv[1])
t0 = datetime.datetime(2026, 11, 23, 10, 0, 0, tzinfo=datetime.timezone.utc)
for i in range(n):
    ts = (t0 + datetime.timedelta(milliseconds=i // 3)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ev = {
        "eventId": f"urn:vcloud:audit:{uuid.uuid4()}",
        "eventType": "com/vmware/cloud/event/vm/poweron",
        "eventStatus": "SUCCESS",
        "timestamp": ts,
        "operatingOrg": {"name": "acme", "id": "urn:vcloud:org:7f3c2b1a-0000-4000-8000-000000000001"},
        "user": {"name": "ann", "id": "urn:vcloud:user:7f3c2b1a-0000-4000-8000-000000000002"},
        "eventEntity": {"name": f"vm-{i}", "id": f"urn:vcloud:vm:{uuid.uuid4()}"},
        "taskId": None, "cellId": "urn:vcloud:cell:1", "serviceNamespace": "com.vmware.cloud",
        "description": "Powered on virtual machine", "external": False, "additionalProperties": {},
    }
    print(json.dumps({"type": "EVENT", "headers": {"contentType": "application/json"},
                      "payload": json.dumps(ev)}))
PY
SOURCE='kind = "vcd"'
else
TOPIC=app/de-ondics-pacman/de-ondics-pacman_1/gameover
FILTER='app/#'
python3 - "$EVENTS" "$PROFILE" > "$WORK/envelopes.txt" <<'PY'
import json, sys
n, profile = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    body = {"score": i, "isHighscore": i % 7 == 0, "player": f"p{i % 97}"}
    if profile == "scaleit":
        body = {"$schema": "gameover.json", **body}
    print(json.dumps(body))
PY
mkdir -p "$WORK/schemas"
cat > "$WORK/schemas/gameover.json" <<'JSON'
{"$schema": "http://json-schema.org/draft-06/schema#", "type": "object",
 "properties": {"$schema": {"type": "string", "description": "Schema"},
   "score": {"type": "integer", "description": "Punkte"},
   "isHighscore": {"type": "boolean", "description": "Rekord?"},
   "player": {"type": "string", "description": "Spieler"}},
 "required": ["score", "isHighscore"]}
JSON
if [ "$PROFILE" = scaleit ]; then
  SOURCE="kind = \"scaleit\"
schema_dir = \"$WORK/schemas\""
else
  SOURCE='kind = "scaleit"
require_schema = false'
fi
fi
echo "backlog: $EVENTS $PROFILE messages, $(( $(stat -c %s "$WORK/envelopes.txt") / EVENTS )) bytes each on average" >&2

now_us() { date +%s%6N; }

RESULTS="$WORK/results.tsv"
for run in $(seq 1 "$RUNS"); do
  PORT=$(free_port)
  cat > "$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages $WINDOW
EOF
  "$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

  # Persistent sessions for both consumers, then the backlog.
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q "$QOS" -c -i bench-gapless -t "$FILTER" -E
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q "$QOS" -c -i bench-mosquitto-sub -t "$FILTER" -E
  "$PUBLISH" "$PORT" "$TOPIC" "$QOS" < "$WORK/envelopes.txt"

  rm -f "$WORK"/gapless.db* "$WORK/events.jsonl"
  if [ "$STORE" = postgres ]; then
    pg_empty
    STORE_KEYS="url = \"$PG_URL\""
  else
    STORE_KEYS="path = \"$WORK/gapless.db\"
synchronous = \"$SYNC\""
  fi
  pg_before=$(pg_cpu_s)
  cat > "$WORK/gapless.toml" <<EOF
[source]
$SOURCE
name = "bench"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
client_id = "bench-gapless"
clean_session = false
qos = $QOS
[store]
$STORE_KEYS
[[sink]]
name = "file"
kind = "file"
path = "$WORK/events.jsonl"
EOF
  start=$(now_us)
  # CPU and WAL frame headers (24-byte writes) of the gapless process and its threads.
  perf stat -x, -o "$WORK/perf.csv" -e task-clock \
    -e syscalls:sys_enter_pwrite64 --filter 'count == 24' \
    -e syscalls:sys_enter_write --filter 'count == 24' \
    "${GAPLESS_BIN:-$GAPLESS}" --log-level warn run --config "$WORK/gapless.toml" --exit-idle 1s --summary "$WORK/summary.json" &
  GPID=$!
  if [ -n "${PERF_DATA:-}" ]; then
    sleep 0.2
    perf record -q -F 999 --call-graph dwarf,16384 -o "$PERF_DATA" -p "$(pgrep -P "$GPID")" 2>/dev/null &
  fi
  wal=0  # the WAL's peak size, sampled every 100 ms while gapless drains
  child=  # gapless itself (perf's child)
  rss_seen=0 rss_file=0  # RSS's file-backed part (mapped code) at its sampled peak
  while kill -0 "$GPID" 2>/dev/null; do
    s=$(stat -c %s "$WORK/gapless.db-wal" 2>/dev/null || echo 0)
    [ "$s" -gt "$wal" ] && wal=$s
    [ -n "$child" ] || child=$(pgrep -P "$GPID" | head -1 || true)
    if [ -n "$child" ]; then
      read -r v f < <(awk '/^VmRSS/ {v=$2} /^RssFile/ {f=$2} END {print v+0, f+0}' "/proc/$child/status" 2>/dev/null || echo "0 0")
      [ "$v" -gt "$rss_seen" ] && rss_seen=$v && rss_file=$f
    fi
    sleep 0.1
  done
  wait "$GPID"
  read -r stored last rss batches < <(python3 -c '
import json,sys; s=json.load(open(sys.argv[1])); c=s["counters"]
print(c["stored"], max(c["last_commit_us"], c["last_delivered_us"]), s["peak_rss_kib"], c["batches"])' "$WORK/summary.json")
  lines=$(wc -l < "$WORK/events.jsonl")
  if [ "$stored" != "$EVENTS" ] || [ "$lines" != "$EVENTS" ]; then
    echo "run $run: gapless stored $stored and wrote $lines lines, expected $EVENTS" >&2
    exit 1
  fi
  g_s=$(python3 -c "print(($last - $start) / 1e6)")
  read -r cpu_ms frames < <(python3 -c '
import sys
v = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        v[f[2]] = v.get(f[2], 0) + float(f[0])
print(v["task-clock"], int(v.get("syscalls:sys_enter_pwrite64", 0) + v.get("syscalls:sys_enter_write", 0)))' "$WORK/perf.csv")
  pg_s=$(python3 -c "print($(pg_cpu_s) - $pg_before)")
  if [ "$STORE" = postgres ]; then
    page=0 row=0 c_rate=0
  else
  read -r page row < <(python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
page = db.execute("PRAGMA page_size").fetchone()[0]
cols = [r[1] for r in db.execute("PRAGMA table_info(events)")]
row = db.execute("SELECT avg(" + " + ".join(f"coalesce(length(CAST({c} AS BLOB)), 8)" for c in cols) + ") FROM events").fetchone()[0]
print(page, row)' "$WORK/gapless.db")
  c_rate=$("$COMMIT" "$WORK" 50000 "$WINDOW" "$SYNC")
  fi

  start=$(now_us)
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q "$QOS" -c -i bench-mosquitto-sub -t "$FILTER" -C "$EVENTS" > /dev/null
  m_s=$(python3 -c "print(($(now_us) - $start) / 1e6)")

  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=
  python3 - "$run" "$EVENTS" "$g_s" "$m_s" "$rss" "$wal" "$cpu_ms" "$frames" "$page" "$row" "$c_rate" "$batches" "$rss_file" "$pg_s" <<'PY' | tee -a "$RESULTS"
import sys
a = sys.argv[1:]
run, n, g, m, rss, wal = a[0], int(a[1]), float(a[2]), float(a[3]), int(a[4]), int(a[5])
cpu_ms, frames, page, row, c, batches = float(a[6]), int(a[7]), int(a[8]), float(a[9]), float(a[10]), int(a[11])
rss_file, pg_s = int(a[12]), float(a[13])
s = n / m
sqlite = c > 0
limit = 1 / (1 / c + 1 / s) if sqlite else 0
wal_ev = frames * (page + 24) / n
only = lambda text: text if sqlite else "-"
print(f"{run}\t{g:.2f}\t{n/g:.0f}\t{cpu_ms*1000/n:.1f}\t{pg_s*1e6/n:.1f}\t{s:.0f}\t{(n/g)/s:.2f}\t{only(f'{c:.0f}')}\t{only(f'{limit:.0f}')}"
      f"\t{only(f'{(n/g)/limit:.2f}' if sqlite else '')}\t{only(f'{wal_ev:.0f}')}\t{only(f'{row:.0f}')}\t{only(f'{wal_ev/row:.2f}' if sqlite else '')}"
      f"\t{rss/1024:.1f}\t{rss_file/1024:.1f}\t{only(f'{wal/2**20:.1f}')}\t{n/batches:.1f}")
PY
done

echo
echo "| run | gapless s | gapless ev/s | CPU µs/event | Postgres CPU µs/event | mosquitto_sub ev/s | ratio | commits C rows/s | serial limit ev/s | ratio to limit | WAL B/event | stored row B | WAL/row | peak RSS MB | of which file-backed MB | peak WAL MiB | events/commit |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '{printf "|"; for (i = 1; i <= 17; i++) printf " %s |", $i; printf "\n"}' "$RESULTS"
printf "| **median** |"
for col in $(seq 2 17); do printf " %s |" "$(cut -f"$col" "$RESULTS" | median)"; done
echo
echo "($EVENTS $PROFILE events, store $STORE, store.synchronous = $SYNC, mosquitto max_inflight_messages = $WINDOW, QoS $QOS)"
