#!/usr/bin/env bash
# Failover benchmark: an active/passive pair of release gapless binaries on a
# Postgres store of the bench's own (scripts/bench-lib.sh), every key at its
# default but the store URL and the admin port (two processes on one host).
# VCD envelopes stream into mosquitto at RATE/s; once the file sink has
# written 200 events, the leader is SIGKILLed (or, with SIGNAL = TERM,
# stopped cleanly). Reported per run, from the signal: when the standby took the lease, when it was subscribed, and when
# the file sink got its first line from the new leader (the dead one writes
# nothing more). The median of the runs is the figure; with the default
# store.lease_ttl = 10 s and store.lease_renew = 2 s a takeover waits for
# the dead leader's lease to expire, 8 to 10 s after its last renewal, plus
# up to one renewal interval. A clean stop releases the lease after its
# last commit, and the standby takes it at its next try.
#
# Usage: scripts/bench-failover.sh [RUNS] [RATE] [SIGNAL]
#   RUNS    repetitions (default 3)
#   RATE    events per second published during the run (default 100)
#   SIGNAL  KILL (default) or TERM, sent to the leader
# Needs: mosquitto, mosquitto-clients, postgresql, python3.
set -euo pipefail

RUNS=${1:-3}
RATE=${2:-100}
SIGNAL=${3:-KILL}
case $SIGNAL in KILL | TERM) ;; *) echo "bench-failover: SIGNAL is KILL or TERM, not $SIGNAL" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
need bench-failover "mosquitto mosquitto-clients python3" mosquitto mosquitto_pub python3
echo "building the release binary..." >&2
cargo build --release -q --bin gapless
GAPLESS="$ROOT/target/release/gapless"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pg_stop "$WORK"
  rm -rf "$WORK"
}
trap cleanup EXIT
pg_start "$WORK"

PORT=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

cat > "$WORK/gapless.toml" <<EOF
[source]
kind = "vcd"
name = "bench"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
[store]
url = "$PG_URL"
[admin]
listen = "127.0.0.1:0"
[[sink]]
name = "file"
kind = "file"
path = "$WORK/events.jsonl"
EOF

# Waits (up to 60 s) until FILE contains TEXT.
wait_log() {
  for _ in $(seq 1 1200); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.05; done
  echo "bench-failover: no \"$2\" in $1:" >&2; cat "$1" >&2; exit 1
}

RESULTS="$WORK/results.tsv"
for run in $(seq 1 "$RUNS"); do
  pg_empty
  rm -f "$WORK/events.jsonl"
  "$GAPLESS" run --config "$WORK/gapless.toml" 2> "$WORK/leader.log" &
  LEADER=$!
  PIDS+=("$LEADER")
  wait_log "$WORK/leader.log" "subscribed"
  "$GAPLESS" run --config "$WORK/gapless.toml" 2> "$WORK/standby.log" &
  STANDBY=$!
  PIDS+=("$STANDBY")
  wait_log "$WORK/standby.log" "standing by"
  # RATE envelopes a second, each with its own event id, until killed.
  python3 -u - "$RATE" 2>/dev/null <<'PY' | mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t publish/org/user -l &
import datetime, json, sys, time, uuid
period = 1 / float(sys.argv[1])
while True:
    now = datetime.datetime.now(datetime.timezone.utc)
    ev = {"eventId": f"urn:vcloud:audit:{uuid.uuid4()}", "eventType": "com/vmware/cloud/event/vm/poweron",
          "eventStatus": "SUCCESS", "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
          "operatingOrg": {"name": "acme", "id": "urn:vcloud:org:1"}, "user": {"name": "ann", "id": "urn:vcloud:user:1"},
          "eventEntity": {"name": "vm", "id": "urn:vcloud:vm:1"}, "description": "Powered on virtual machine"}
    print(json.dumps({"type": "EVENT", "headers": {"contentType": "application/json"}, "payload": json.dumps(ev)}))
    time.sleep(period)
PY
  PUBLISHER=$!
  PIDS+=("$PUBLISHER")
  python3 - "$LEADER" "$WORK/events.jsonl" "$WORK/standby.log" "$run" "$SIGNAL" <<'PY' | tee -a "$RESULTS"
import os, signal, sys, time
leader, events, log, run, sig = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
lines = lambda: sum(1 for _ in open(events)) if os.path.exists(events) else 0
deadline = time.monotonic() + 60
while lines() < 200:
    if time.monotonic() > deadline:
        sys.exit("bench-failover: the leader wrote fewer than 200 events in 60 s")
    time.sleep(0.05)
before = lines()
os.kill(leader, getattr(signal, "SIG" + sig))
killed = time.monotonic()
seen = {}
while "delivered" not in seen:
    now = time.monotonic() - killed
    if now > 120:
        sys.exit(f"bench-failover: no delivery 120 s after the kill: {seen}")
    text = open(log).read()
    for key, line in (("leading", "leading lease"), ("subscribed", "subscribed")):
        if key not in seen and line in text:
            seen[key] = now
    # A clean stop delivers what it released before it goes: count from
    # the new leader's lease on.
    if lines() > before and ("leading" in seen or sig == "KILL"):
        seen["delivered"] = now
    elif "leading" not in seen:
        before = lines()
    time.sleep(0.01)
print(f"{run}\t{seen.get('leading', 0):.2f}\t{seen.get('subscribed', 0):.2f}\t{seen['delivered']:.2f}")
PY
  kill "$PUBLISHER" 2>/dev/null || true
  kill "$STANDBY"
  wait "$STANDBY" || { echo "bench-failover: the new leader did not stop cleanly:" >&2; cat "$WORK/standby.log" >&2; exit 1; }
  wait "$LEADER" 2>/dev/null || true
done

echo
echo "| run | lease taken s | subscribed s | first event delivered s |"
echo "|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$RESULTS"
printf "| **median** |"
for col in 2 3 4; do printf " %s |" "$(cut -f"$col" "$RESULTS" | median)"; done
echo
echo "(seconds after SIG$SIGNAL to the leader; $RATE events/s; store.lease_ttl and store.lease_renew at their defaults)"
