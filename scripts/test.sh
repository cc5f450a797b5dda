#!/usr/bin/env bash
# The project's test command (see README): installs dependencies, builds every binary, checks
# formatting and clippy (-D warnings), then runs the unit tests of src/ and the CRI conformance
# suite (conformance/) against a fresh berth started on temporary roots. Run as root from a fresh clone; reads no stdin.
#
# Then the node-image lane: deploy/node-image built with podman and used as a kind node
# (conformance/src/bin/node-image-check.rs; BERTH_NODE_LANE=0 leaves it out, said in the output).
#
# Then the cgroup v2 lane: the conformance suite again inside a Debian 12 guest booted with
# cgroup v2 and systemd (scripts/v2-guest.sh, docs/cgroups.md), once with the systemd cgroup
# driver (every case), once with cgroupfs (the cgroup cases) and once with cgroupfs nested in a
# cgroup namespace as in a kind node (the cgroup cases).
#
# Env: CRI_TARGET=containerd or BERTH_ENDPOINT=unix:///x.sock point the suite elsewhere
# (see conformance/README.md; no v2 lane then); BERTH_TEST_KEEP=1 keeps the suite's temp dir;
# BERTH_V2_LANE=0 leaves the v2 lane out (said in the output, never silently).
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

# Lints: formatting (rustfmt.toml) and clippy with warnings as errors. A failure fails the test
# command, but the tests still run, so one run reports everything.
lint_failed=()
echo "== cargo fmt --all --check"
cargo fmt --all --check </dev/null || lint_failed+=("cargo fmt --all --check (run cargo fmt --all)")
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets </dev/null -- -D warnings || lint_failed+=("cargo clippy -D warnings")

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

# The node-image lane (issue #13): deploy/node-image built with podman from this build's
# binaries, started as kind starts a node, and used over CRI and `podman exec`
# (conformance/src/bin/node-image-check.rs). KUBELET=PATH adds a static pod run by the node's
# kubelet. Its "N passed, N failed" line goes into the log.
if [ -n "${CRI_TARGET:-}${BERTH_ENDPOINT:-}" ]; then
  echo "== node-image lane: not run (the suite targets ${CRI_TARGET:-$BERTH_ENDPOINT})" | tee -a "$log"
elif [ "${BERTH_NODE_LANE:-1}" = 0 ]; then
  echo "== node-image lane: NOT RUN (BERTH_NODE_LANE=0)" | tee -a "$log"
else
  if [ ! -x /usr/bin/podman ]; then
    echo "== installing podman (the node-image lane's builder and node runtime)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman </dev/null
  fi
  echo "== node-image lane: deploy/node-image/build.sh + node-image-check"
  set +e
  target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  "$target_dir/debug/node-image-check" ${KUBELET:+--kubelet "$KUBELET"} </dev/null 2>&1 | tee -a "$log"
  node_lane=${PIPESTATUS[0]}
  set -e
  if [ "$node_lane" != 0 ]; then
    echo "== node-image lane FAILED (exit $node_lane)"
    status=1
  fi
fi

# The cgroup v2 lane. Its suite lines go into the same log, so the closing total counts them.
if [ -n "${CRI_TARGET:-}${BERTH_ENDPOINT:-}" ]; then
  echo "== cgroup v2 lane: not run (the suite targets ${CRI_TARGET:-$BERTH_ENDPOINT}, not a berth it starts)" | tee -a "$log"
elif [ "${BERTH_V2_LANE:-1}" = 0 ]; then
  echo "== cgroup v2 lane: NOT RUN (BERTH_V2_LANE=0): berth was tested on this host's cgroups only" | tee -a "$log"
else
  set +e
  echo "== cgroup v2 lane: systemd cgroup driver, every case (scripts/v2-guest.sh)"
  BERTH_V2_ENV="CRI_CGROUP_MANAGER=systemd" bash scripts/v2-guest.sh run </dev/null 2>&1 | tee -a "$log"
  v2_systemd=${PIPESTATUS[0]}
  echo "== cgroup v2 lane: cgroupfs driver, the cgroup cases"
  bash scripts/v2-guest.sh run cgroup memory stats_ oom metrics inspect restart leak </dev/null 2>&1 | tee -a "$log"
  v2_cgroupfs=${PIPESTATUS[0]}
  echo "== cgroup v2 lane: cgroupfs driver, berth in a nested cgroup namespace (a kind node), the cgroup cases"
  bash scripts/v2-guest.sh run --nested cgroup memory stats_ oom metrics </dev/null 2>&1 | tee -a "$log"
  v2_nested=${PIPESTATUS[0]}
  set -e
  if [ "$v2_systemd" != 0 ] || [ "$v2_cgroupfs" != 0 ] || [ "$v2_nested" != 0 ]; then
    echo "== cgroup v2 lane FAILED (systemd driver: exit $v2_systemd, cgroupfs: exit $v2_cgroupfs, nested: exit $v2_nested)"
    status=1
  fi
fi

if [ "${#lint_failed[@]}" -gt 0 ]; then
  printf '== lint FAILED: %s\n' "${lint_failed[@]}"
  status=1
fi

# One closing line over every test binary: cargo's own "test result:" lines (unit and
# integration tests) plus the conformance suite's "N passed, N failed" line.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  /^[0-9]+ passed, [0-9]+ failed/ { split($0, a, /[ ,]+/); p += a[1]; f += a[3] }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$log"
exit "$status"
