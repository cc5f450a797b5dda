#!/usr/bin/env bash
# Installs what building and testing berth needs on Debian 12, idempotently: apt-get runs only
# when something is missing (and `apt-get update` only then). Needs root. No stdin.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# package -> a file that proves it is installed
declare -A need=(
  [runc]=/usr/sbin/runc
  # a second runtime handler: the self-test must report it when it cannot run here
  [crun]=/usr/bin/crun
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [docker-registry]=/usr/bin/docker-registry
  [busybox]=/bin/busybox
  [containerd]=/usr/bin/containerd
  [iproute2]=/sbin/ip
  [iptables]=/usr/sbin/iptables
  [libc-bin]=/usr/bin/ldd
  [util-linux]=/bin/umount
  [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
  [openssl]=/usr/bin/openssl
  [pkg-config]=/usr/bin/pkg-config
  [gcc]=/usr/bin/cc
  [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
  # a venv for Python grpcio, the real non-Go gRPC client the conformance suite drives
  [python3-venv]=/usr/share/doc/python3-venv
)

missing=()
for pkg in "${!need[@]}"; do
  if [ ! -e "${need[$pkg]}" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${missing[*]} and not root: install them or rerun as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
  echo "install-deps: all system packages present"
fi

# cargo/rustc: present on the machine; look in ~/.cargo/bin too.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found (install Rust with rustup: https://rustup.rs)" >&2
  exit 1
fi
echo "install-deps: $(cargo --version), $(rustc --version)"
