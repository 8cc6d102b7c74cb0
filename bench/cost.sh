#!/bin/bash
# Issue 15's table in one command (root): what the agent costs on a busy node, every figure
# beside its reference measured in the same invocation.
#
#   bash bench/cost.sh [--baseline OTHER_PODTRAIL] [session_storm.py options...]
#
# 1. `cargo build --release` of this tree (the binary every figure is about).
# 2. bench/session_storm.py: agent CPU per exec in a 20 000-exec session storm beside Debian's
#    execsnoop, execs counted by each, RSS at rest / peak / after / settled, `podtrail capture`
#    beside execsnoop on a host storm, and RssAnon with 10 000 live processes and 1 000 open
#    sessions. Extra options go to it unchanged (e.g. `--repeat 2 --baseline /tmp/podtrail-main`).
# 3. The process-stage benchmark (CPU per record beside decoding; table memory per process).
# 4. The export benchmark (CPU per span beside a minimal SDK exporter; memory per open
#    session beside an SDK open root span; with and without redaction and the disk queue).
# 5. The binary's size: as built, without debug info (what the image ships), text. The smaller
#    `dist` build (fat LTO, `scripts/image.sh --dist`) takes about an hour here: not run.
#
# About 30 minutes on 2 cores with the defaults. Set COST_SKIP_CARGO_BENCHES=1 to run only 1, 2
# and 5. Read ratios, not absolute times: the machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/cost.sh: run as root (it loads BPF programs and starts containerd)" >&2; exit 1; }
for tool in execsnoop ctr containerd runc cc strip size; do
    command -v "$tool" >/dev/null || command -v "/usr/sbin/$tool" >/dev/null || {
        echo "bench/cost.sh: '$tool' is missing: run scripts/setup.sh first" >&2
        exit 1
    }
done

echo "==== 1. cargo build --release"
cargo build --release --quiet
bin=target/release/podtrail

echo "==== 2. session storm, capture storm, live processes and sessions (bench/session_storm.py $*)"
python3 bench/session_storm.py --podtrail "$bin" "$@"

if [ "${COST_SKIP_CARGO_BENCHES:-0}" != 1 ]; then
    echo "==== 3. process stage (cargo bench --bench process_stage)"
    cargo bench --quiet --bench process_stage -- --execs 20000 --connects 20000 --rounds 5
    echo "==== 4. export (cargo bench --bench export_otlp)"
    cargo bench --quiet --bench export_otlp -- --sessions 5000 --rounds 3 --backlog-mib 0 --policies none
fi

echo "==== 5. the binary (bench/binary_size.py: where its bytes go)"
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip --strip-debug -o "$stripped" "$bin"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
echo "as built: $(mb "$(stat -c %s "$bin")"); without debug info (what scripts/image.sh ships): $(mb "$(stat -c %s "$stripped")")"
size -A "$stripped" | awk '$1 == ".text" || $1 == ".rodata" { printf "  %s %.1f MB\n", $1, $2 / 1e6 }'
python3 bench/binary_size.py "$bin"
