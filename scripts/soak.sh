#!/usr/bin/env bash
# Soak test of the first month, compressed: the release gapless binary on its
# defaults, fed EVENTS events at RATE events/s through mosquitto while the
# file sink reads and the default 7-day retention runs on a clock compressed
# so that 7 days last RETENTION_S seconds. Samples WAL, database and RSS every
# second; fails if the WAL passes 64 MiB, RSS grows >10% after warm-up, or
# the database keeps growing once retention applies.
#
# Usage: scripts/soak.sh [EVENTS] [RATE] [RETENTION_S]
#   defaults: 1000000 events at 2000/s (about 8.5 minutes), 7 days = 120 s.
# The samples go to target/soak.csv; a table of them is printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export SOAK_EVENTS=${1:-1000000} SOAK_RATE=${2:-2000} SOAK_RETENTION_S=${3:-120}
export SOAK_CSV="$ROOT/target/soak.csv"
cargo test --release --test it soak -- --ignored --nocapture
echo "samples: $SOAK_CSV"
