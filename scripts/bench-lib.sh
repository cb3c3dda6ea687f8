# Sourced by the benches.
#   need BENCH PACKAGES TOOL...  exits 2 naming PACKAGES unless every TOOL
#                  is there (on PATH or in /usr/sbin); sets MOSQUITTO
#   free_port      prints a free loopback TCP port
#   median         the median of the numbers on stdin, one per line
# And a Postgres server of the bench's own, in a work directory (initdb +
# pg_ctl, fsync on, as the `postgres` user when run as root: initdb
# refuses root):
#   pg_start DIR   starts it under DIR; sets PG_URL, PSQL and PG_CTL
#   pg_stop DIR    stops it (immediately); safe when it never started
#   pg_empty       drops and recreates the public schema (a fresh store)

need() {
  local bench=$1 packages=$2 tool
  shift 2
  for tool in "$@"; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
      echo "$bench: $tool is missing (apt-get install $packages)" >&2
      exit 2
    }
  done
  MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() {
  local dir=$1 bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || { echo "Postgres is missing (apt-get install postgresql)" >&2; exit 2; }
  PG_CTL=$bin/pg_ctl
  port=$(free_port)
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pg" && chmod 755 "$dir"; fi
  as_pg "$bin/initdb" -D "$dir/pg/data" -A trust -U gapless -E UTF8 >/dev/null
  as_pg "$PG_CTL" -D "$dir/pg/data" -l "$dir/pg/log" -w \
    -o "-p $port -h 127.0.0.1 -k $dir/pg" start >/dev/null
  PG_URL="postgres://gapless@127.0.0.1:$port/postgres"
  PSQL="$bin/psql -q -h 127.0.0.1 -p $port -U gapless postgres"
}

pg_stop() {
  [ -n "${PG_CTL:-}" ] && as_pg "$PG_CTL" -D "$1/pg/data" -m immediate stop >/dev/null 2>&1 || true
}

pg_empty() {
  $PSQL -c "DROP SCHEMA public CASCADE; CREATE SCHEMA public;" 2>/dev/null
}
