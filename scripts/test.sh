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

# Python grpcio (from PyPI, not Debian's 1.51: gRPC core changed its unix-socket :authority in
# 1.57) for the conformance case that drives a real non-Go gRPC client with default options.
venv=/var/cache/berth-test/venv
if ! "$venv/bin/python" -c 'import grpc' >/dev/null 2>&1; then
  echo "== installing grpcio into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio </dev/null
fi

echo "== cargo build --workspace --bins"
cargo build --workspace --bins </dev/null

echo "== cargo test --workspace --no-fail-fast"
# The conformance suite (tests/cri.rs in berth-conformance) prints one line per case and a
# closing "N passed, N failed" line; --no-fail-fast runs every test binary even when one fails,
# and cargo still exits non-zero when any failed.
log=$(mktemp /tmp/berth-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast </dev/null 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One closing line over every test binary: cargo's own "test result:" lines (unit and
# integration tests) plus the conformance suite's "N passed, N failed" line.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  /^[0-9]+ passed, [0-9]+ failed/ { split($0, a, /[ ,]+/); p += a[1]; f += a[3] }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$log"
exit "$status"
