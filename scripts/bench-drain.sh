#!/usr/bin/env bash
# Drain benchmark: a backlog of QoS 1 VCD envelopes parked in mosquitto for a
# persistent session, drained by the release gapless binary (into SQLite and
# a file sink) and, in the same run, by `mosquitto_sub -q 1 -c` (which acks
# at once and writes nowhere). Reports both rates, their ratio and gapless's
# peak RSS and peak WAL size; the median of the runs is the figure.
# GAPLESS_BIN=path runs another gapless binary (e.g. an older build) instead.
#
# Usage: scripts/bench-drain.sh [EVENTS] [RUNS] [SYNCHRONOUS] [PROFILE]
#   EVENTS       backlog size (default 200000)
#   RUNS         repetitions (default 3)
#   SYNCHRONOUS  gapless store.synchronous: full (default) or normal
#   PROFILE      vcd (default); scaleit (Pacman gameover bodies validated
#                against a draft-06 schema from schema_dir); scaleit-off (the
#                same bodies, no schema, require_schema = false)
# Needs: mosquitto, mosquitto-clients, python3; builds the gapless binary and
# examples/publish_lines (a QoS 1 publisher; `mosquitto_pub -l` drops messages
# when fed a large file at full speed).
set -euo pipefail

EVENTS=${1:-200000}
RUNS=${2:-3}
SYNC=${3:-full}
PROFILE=${4:-vcd}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

for tool in mosquitto mosquitto_sub python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "bench-drain: $tool is missing (apt-get install mosquitto mosquitto-clients python3)" >&2
    exit 2
  }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

echo "building the release binary..." >&2
cargo build --release -q --bin gapless --example publish_lines
GAPLESS="$ROOT/target/release/gapless"
PUBLISH="$ROOT/target/release/examples/publish_lines"

WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

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
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

RESULTS="$WORK/results.tsv"
for run in $(seq 1 "$RUNS"); do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
EOF
  "$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

  # Persistent sessions for both consumers, then the backlog.
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -c -i bench-gapless -t "$FILTER" -E
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -c -i bench-mosquitto-sub -t "$FILTER" -E
  "$PUBLISH" "$PORT" "$TOPIC" < "$WORK/envelopes.txt"

  rm -f "$WORK"/gapless.db* "$WORK/events.jsonl"
  cat > "$WORK/gapless.toml" <<EOF
[source]
$SOURCE
name = "bench"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
client_id = "bench-gapless"
clean_session = false
[stream]
order = "arrival"
[store]
path = "$WORK/gapless.db"
synchronous = "$SYNC"
[[sink]]
name = "file"
kind = "file"
path = "$WORK/events.jsonl"
EOF
  start=$(now_us)
  "${GAPLESS_BIN:-$GAPLESS}" --log-level warn run --config "$WORK/gapless.toml" --exit-idle 1s --summary "$WORK/summary.json" &
  GPID=$!
  wal=0  # the WAL's peak size, sampled every 100 ms while gapless drains
  while kill -0 "$GPID" 2>/dev/null; do
    s=$(stat -c %s "$WORK/gapless.db-wal" 2>/dev/null || echo 0)
    [ "$s" -gt "$wal" ] && wal=$s
    sleep 0.1
  done
  wait "$GPID"
  read -r stored last rss < <(python3 -c '
import json,sys; s=json.load(open(sys.argv[1])); c=s["counters"]
print(c["stored"], max(c["last_commit_us"], c["last_delivered_us"]), s["peak_rss_kib"])' "$WORK/summary.json")
  lines=$(wc -l < "$WORK/events.jsonl")
  if [ "$stored" != "$EVENTS" ] || [ "$lines" != "$EVENTS" ]; then
    echo "run $run: gapless stored $stored and wrote $lines lines, expected $EVENTS" >&2
    exit 1
  fi
  g_s=$(python3 -c "print(($last - $start) / 1e6)")

  start=$(now_us)
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -c -i bench-mosquitto-sub -t "$FILTER" -C "$EVENTS" > /dev/null
  m_s=$(python3 -c "print(($(now_us) - $start) / 1e6)")

  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=
  python3 - "$run" "$EVENTS" "$g_s" "$m_s" "$rss" "$wal" <<'PY' | tee -a "$RESULTS"
import sys
run, n, g, m, rss, wal = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f"{run}\t{g:.2f}\t{n/g:.0f}\t{m:.2f}\t{n/m:.0f}\t{(n/g)/(n/m):.2f}\t{rss/1024:.1f}\t{wal/2**20:.1f}")
PY
done

echo
echo "| run | gapless s | gapless ev/s | mosquitto_sub s | mosquitto_sub ev/s | ratio | gapless peak RSS MB | peak WAL MiB |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6,$7,$8}' "$RESULTS"
printf "| **median** | %s | %s | %s | %s | %s | %s | %s |\n" \
  "$(cut -f2 "$RESULTS" | median)" "$(cut -f3 "$RESULTS" | median)" "$(cut -f4 "$RESULTS" | median)" \
  "$(cut -f5 "$RESULTS" | median)" "$(cut -f6 "$RESULTS" | median)" "$(cut -f7 "$RESULTS" | median)" \
  "$(cut -f8 "$RESULTS" | median)"
echo "($EVENTS $PROFILE events, store.synchronous = $SYNC, mosquitto max_inflight_messages = 20 (default))"
