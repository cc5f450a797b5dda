#!/usr/bin/env bash
# Benchmarks berth against containerd 1.6 side by side over the CRI socket (see docs/benchmarks.md).
# Installs dependencies (scripts/install-deps.sh, nothing more), builds berth in release
# (`cargo build --release --bins`) and the bench binary of berth-conformance, then runs it as root.
# The bench sets up a local registry and test images once, starts each daemon on fresh temp roots
# under /tmp/berth-bench-* (or --tmp DIR), prints a side-by-side table, removes everything it
# created and checks for leftovers (mounts, /var/run/netns, processes, cgroup dirs, bridge brt0).
#
# Arguments go to the bench: [--pulls N] [--runs N] [--pods N] [--imports N] [--only scale|import]
# [--tmp DIR] [--targets berth,containerd] (see its --help).
# Reads no stdin. Exit status non-zero when a target failed or something was left behind.
set -euo pipefail

cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: needs root (starts CRI daemons, mounts, network namespaces)" >&2
  exit 1
fi

bash scripts/install-deps.sh </dev/null

echo "== cargo build --release --bins (berth, berth-monitor, berth-pause)"
cargo build --release --bins </dev/null
# The bench client is built in the dev profile: a separate release build of berth-conformance
# would rebuild tokio/tonic with other features. Its overhead is the "Version RPC" row.
echo "== cargo build -p berth-conformance --bin bench"
cargo build -p berth-conformance --bin bench </dev/null

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
echo "== bench (berth $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $target_dir/release/berth)"
BERTH_BIN="$target_dir/release/berth" "$target_dir/debug/bench" "$@" </dev/null
