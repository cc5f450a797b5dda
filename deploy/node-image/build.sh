#!/usr/bin/env bash
# Builds a kind-style node image that runs berth as its container runtime (issue #13 item 3;
# docs/operations.md, "kind and minikube nodes"). Everything comes from Debian packages and this
# checkout's binaries; nothing is pulled from a container registry.
#
#   bash deploy/node-image/build.sh [--tag TAG] [--bin-dir DIR] [--kubernetes DIR]
#                                   [--preload ARCHIVE]...
#
#   --tag TAG          the image to make (default localhost/berth-node:dev)
#   --bin-dir DIR      berth, berth-monitor and berth-pause come from DIR (default: a release
#                      build of this checkout, made when missing or older than the sources)
#   --kubernetes DIR   kubelet, kubeadm and kubectl from DIR go to /usr/bin (those of DIR that
#                      exist; Debian 12 packages none of them). Without it the image has
#                      kubelet's unit and drop-ins but no kubelet.
#   --preload ARCHIVE  a docker-archive or OCI-layout tarball (`docker save`, `berth image
#                      export`), imported into berth's store with `berth image import` at the
#                      node's first boot, before berth serves (why not at build time: the
#                      README in this directory)
#
# The base, a Debian 12 minbase tree with systemd, runc and the CNI plugins, is debootstrapped
# once from deb.debian.org into $BERTH_NODE_CACHE (default /var/cache/berth-node) and imported
# as localhost/berth-node-base:<recipe hash>; later builds reuse it. The builder is podman, or
# docker when podman is missing (BERTH_NODE_BUILDER=podman|docker chooses). Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${BERTH_NODE_CACHE:-/var/cache/berth-node}
export DEBIAN_FRONTEND=noninteractive

tag=localhost/berth-node:dev
bin_dir=
kube_dir=
preload=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --kubernetes) kube_dir=$2; shift 2 ;;
    --preload) preload+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (debootstrap, the image builder)" >&2; exit 1; }

# What the node runs besides berth: systemd as PID 1 (and dbus for the systemd cgroup driver),
# the OCI runtime, the CNI plugins, and the tools kubelet and kube-proxy call (iptables,
# conntrack, ethtool, socat for port-forward, kmod, mount).
packages=(systemd systemd-sysv dbus runc containernetworking-plugins iptables iproute2 conntrack
  ethtool socat kmod procps ca-certificates)
recipe="bookworm minbase v1 ${packages[*]}"
base_tag=localhost/berth-node-base:bookworm-$(printf '%s' "$recipe" | sha256sum | cut -c1-12)

builder=${BERTH_NODE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v podman >/dev/null; then builder=podman; elif command -v docker >/dev/null; then builder=docker; fi
fi
case $builder in
  podman|docker) ;;
  *) echo "build.sh: no image builder: install Debian's podman (apt-get install podman) or docker.io" >&2; exit 1 ;;
esac

image_exists() {
  if [ "$builder" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# The base image: debootstrapped once, then imported as a one-layer image.
base() {
  if image_exists "$base_tag"; then
    echo "build.sh: base $base_tag is there"
    return
  fi
  if [ ! -x /usr/sbin/debootstrap ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap </dev/null
  fi
  local tree=$cache/base
  rm -rf "$tree"
  mkdir -p "$cache"
  echo "build.sh: debootstrap bookworm into $tree (a few minutes)"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" bookworm "$tree" \
    http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
    { tail -30 "$cache/debootstrap.log" >&2; exit 1; }
  # A node container gets these from its runtime, or makes them at boot.
  rm -f "$tree/etc/resolv.conf" "$tree/etc/hostname"
  : >"$tree/etc/machine-id"
  rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin
  # Units that have nothing to do in a container and fail or wait there.
  local unit
  for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
    systemd-modules-load.service systemd-remount-fs.service sys-kernel-debug.mount \
    sys-kernel-tracing.mount; do
    ln -sf /dev/null "$tree/etc/systemd/system/$unit"
  done
  ln -sf /lib/systemd/system/multi-user.target "$tree/etc/systemd/system/default.target"
  echo "build.sh: importing the base as $base_tag"
  tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
    "$builder" import --change 'CMD ["/sbin/init"]' - "$base_tag" >/dev/null
  rm -rf "$tree"
}

# berth's binaries: --bin-dir, or a release build of this checkout.
binaries() {
  if [ -n "$bin_dir" ]; then
    echo "$bin_dir"
    return
  fi
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  (cd "$repo" && cargo build --release --bins </dev/null >&2)
  echo "${CARGO_TARGET_DIR:-$repo/target}/release"
}

base
bins=$(binaries)
for b in berth berth-monitor berth-pause; do
  [ -x "$bins/$b" ] || { echo "build.sh: $bins/$b is missing" >&2; exit 1; }
done

ctx=$(mktemp -d /tmp/berth-node-build.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root"
cp -a "$here/files/." "$root/"
install -D -m 0755 -t "$root/usr/local/bin" "$bins/berth" "$bins/berth-monitor" "$bins/berth-pause"
install -D -m 0644 "$repo/deploy/systemd/berth.service" "$root/etc/systemd/system/berth.service"
install -D -m 0644 "$repo/deploy/cni/10-berth-bridge.conflist" "$root/etc/cni/net.d/10-berth-bridge.conflist"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/berth/README.md"
mkdir -p "$root/usr/share/berth/preload"
i=0
for a in "${preload[@]}"; do
  [ -f "$a" ] || { echo "build.sh: --preload $a: no such file" >&2; exit 1; }
  # Numbered so that the first boot imports them in the order given.
  cp "$a" "$root/usr/share/berth/preload/$(printf '%02d' $i)-$(basename "$a")"
  i=$((i + 1))
done
if [ -n "$kube_dir" ]; then
  found=0
  for b in kubelet kubeadm kubectl; do
    if [ -x "$kube_dir/$b" ]; then
      install -D -m 0755 "$kube_dir/$b" "$root/usr/bin/$b"
      found=1
    fi
  done
  [ "$found" = 1 ] || { echo "build.sh: --kubernetes $kube_dir holds no kubelet, kubeadm or kubectl" >&2; exit 1; }
fi
cp "$here/Containerfile" "$ctx/Containerfile"

echo "build.sh: $builder build -t $tag (base $base_tag, berth from $bins, ${#preload[@]} preloaded archive(s))"
"$builder" build --build-arg "BASE=$base_tag" -t "$tag" -f "$ctx/Containerfile" "$ctx" >"$ctx/build.log" 2>&1 ||
  { cat "$ctx/build.log" >&2; exit 1; }
echo "build.sh: built $tag"
