#!/usr/bin/env bash
# The project's test command (see README): installs dependencies, builds every binary, then runs
# the unit tests of src/ and the CRI conformance suite (conformance/) against a fresh berth
# started on temporary roots. Run as root from a fresh clone; reads no stdin.
#
# Env: CRI_TARGET=containerd or BERTH_ENDPOINT=unix:///x.sock point the suite elsewhere
# (see conformance/README.md); BERTH_TEST_KEEP=1 keeps the suite's temp dir.
set -euo pipefail

cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

bash scripts/install-deps.sh </dev/null

echo "== cargo build --workspace --bins"
cargo build --workspace --bins </dev/null

echo "== cargo test --workspace --no-fail-fast"
# The conformance suite (tests/cri.rs in berth-conformance) prints one line per case and a
# closing "N passed, N failed" line; --no-fail-fast runs every test binary even when one fails,
# and cargo still exits non-zero when any failed.
cargo test --workspace --no-fail-fast </dev/null
