#!/usr/bin/env bash
# Mutation testing of the code whose mistakes lose, repeat or reorder
# events: the writer (dedup, seq, ack after commit, prune), the release
# rule, the poller's windows and verification, the sink cursor logic, the
# webhook signer and retry classification. Each mutant is one careless
# patch; the library's unit tests (`cargo test --lib`, seconds) must catch
# it. The integration tests are left out: a release build per mutant would
# take days on two cores.
#
#   scripts/mutants.sh            # every mutant in scope (~85 min on 2 cores)
#   scripts/mutants.sh --list     # what is in scope
#   scripts/mutants.sh -F prune   # one function's mutants
#
# Needs `cargo install cargo-mutants --locked`. The report lands in
# target/mutants/mutants.out/ (caught.txt, missed.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || {
    echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2
    exit 2
}
files=(
    src/store/writer.rs src/store/ingest.rs src/store/maintenance.rs
    src/store/release.rs src/stream.rs src/source/poll.rs
    src/sink/window.rs src/sink/mod.rs src/sink/webhook.rs src/sink/retry.rs
)
functions=(
    'Writer::commit' 'Writer::write' 'Batch::push_ingest'
    'Writer::fresh' 'Writer::drop_window_duplicates' 'Writer::insert$' 'in pending$'
    'Writer::prune'
    'Releaser::' 'Sequencer::' 'Rule::'
    'in plan$' 'in establish$' 'in expired$' 'in floor_ms$'
    'run_once_at' 'Poller<H>::verify' 'Poller<H>::send' 'PollError::retryable'
    'AckWindow' 'in resume_point$' 'Signer::sign' 'in webhook_id$' 'in classify$'
)
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done
for r in "${functions[@]}"; do args+=(--re "$r"); done
exec cargo mutants --no-shuffle --output target/mutants "${args[@]}" \
    --cargo-arg=--lib "$@"
