#!/usr/bin/env bash
# run.sh: install what is missing, build, and start the podtrail agent on this machine
# (`podtrail run`: traces container exec sessions and prints each finished session as a tree;
# pass --otlp-endpoint URL to send traces to a collector, Tempo or Jaeger). Needs root.
# Arguments go to `podtrail run`, e.g.  scripts/run.sh --otlp-endpoint http://127.0.0.1:4317
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin podtrail >&2
exec ./target/release/podtrail run "$@"
