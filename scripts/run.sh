#!/usr/bin/env bash
# The README's run command: installs what berth needs (Debian 12, as root), builds it, installs a
# default pod network when /etc/cni/net.d has none, and serves CRI on /run/berth/berth.sock with
# the embedded defaults (plus /etc/berth/berth.toml and berth.d/ when present).
# Extra arguments go to `berth serve` (e.g. --log-level debug, --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --bins
conf_dir=/etc/cni/net.d
if [ -z "$(find "$conf_dir" -maxdepth 1 -type f \( -name '*.conflist' -o -name '*.conf' -o -name '*.json' \) 2>/dev/null)" ]; then
  echo "run.sh: no CNI network config in $conf_dir; installing deploy/cni/10-berth-bridge.conflist" >&2
  install -D -m 0644 deploy/cni/10-berth-bridge.conflist "$conf_dir/10-berth-bridge.conflist"
fi
exec target/release/berth serve "$@"
