#!/usr/bin/env bash
# A fresh Debian 12 machine inside this one, for the README's test command (issue #11 item 6):
# a debootstrap tree (the default variant: what a new Debian install has, no build tools, no
# runc) entered with its own mount, PID and UTS namespaces, a sysfs of its own with this
# machine's cgroup tree bound in, this machine's /dev bound in, a fresh /proc and an empty /run.
# It shares this machine's network namespace (the registry and the pods' bridge live there, as
# on a real host). docs/operations.md says more.
#
#   bash scripts/fresh-tree.sh build          # debootstrap the pristine tree (once, cached)
#   bash scripts/fresh-tree.sh run [CMD...]   # copy it, clone this checkout's HEAD into /root/berth
#                                             # inside, and run CMD there (default:
#                                             # `bash scripts/test.sh`); exits with CMD's status
#
# The tree gets nothing by hand: scripts/test.sh installs what it needs with apt, as on a new
# machine. The one thing bound in is the Rust toolchain (~/.rustup, read-only, and rustup's
# proxies in ~/.cargo/bin), which this machine's network cannot fetch anew; crates come from
# crates.io into the tree's own ~/.cargo.
#
# Its root is a bind mount of a plain directory (pivot_root into it), /run is a new tmpfs, and
# its PID 1 is a shell, not systemd: a runtime must work there. Each run starts from a copy of
# the pristine tree in BERTH_FRESH_WORK (default /var/tmp), removed afterwards unless
# BERTH_FRESH_KEEP=1. Env: BERTH_FRESH_DIR (default /var/cache/berth-test/fresh-tree) holds the
# pristine tree; BERTH_FRESH_REUSE=DIR runs in a kept run's dir again (for iterating; not a
# fresh machine); BERTH_FRESH_ENTER=chroot enters by chroot instead of pivot_root;
# BERTH_FRESH_ENV: extra `NAME=value` lines for CMD's environment (for example
# BERTH_V2_LANE=0). Needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
dir=${BERTH_FRESH_DIR:-/var/cache/berth-test/fresh-tree}
pristine=$dir/tree
export DEBIAN_FRONTEND=noninteractive

# The recipe's stamp: a tree built by an older recipe is rebuilt.
stamp() { echo "bookworm default variant v1"; }

build() {
  if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$(stamp)" ] && [ -x "$pristine/bin/bash" ]; then
    echo "fresh-tree: $pristine is up to date"
    return
  fi
  if [ ! -x /usr/sbin/debootstrap ]; then
    echo "fresh-tree: installing debootstrap"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap </dev/null
  fi
  rm -rf "$pristine" "$dir/stamp"
  mkdir -p "$dir"
  echo "fresh-tree: debootstrap bookworm into $pristine (a few minutes)"
  debootstrap bookworm "$pristine" http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 ||
    { tail -30 "$dir/debootstrap.log" >&2; exit 1; }
  # What a new install's apt has: the security and updates suites too.
  cat >"$pristine/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -f "$pristine/etc/resolv.conf"
  stamp >"$dir/stamp"
}

# Runs inside the new mount, PID and UTS namespaces, as their PID 1: makes the tree the root and
# runs the command there. $1: the run's root; the rest: the command.
enter() {
  local root=$1
  shift
  hostname berth-fresh
  mount --make-rprivate /
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  # A sysfs of its own, as a container gets, with this machine's cgroup tree bound in.
  mount -t sysfs -o nosuid,nodev,noexec sysfs "$root/sys"
  mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  mkdir -p "$root/root/.rustup"
  mount --bind -o ro "$HOME/.rustup" "$root/root/.rustup"
  cd "$root"
  if [ "${BERTH_FRESH_ENTER:-pivot}" = chroot ]; then
    # As `unshare --root` and `chroot` enter a tree: this machine's mounts stay below the root.
    exec_root=(chroot "$root")
  else
    mkdir -p .oldroot
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    exec_root=()
  fi
  local envs=(HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUSTUP_AUTO_INSTALL=0)
  local line
  while IFS= read -r line; do
    [ -n "$line" ] && envs+=("$line")
  done <<<"${BERTH_FRESH_ENV:-}"
  # bash as PID 1 reaps the orphans it adopts (its SIGCHLD handler waits for any child).
  "${exec_root[@]}" env -i "${envs[@]}" sh -c 'cd /root/berth && exec "$@"' sh "$@" &
  local child=$!
  trap 'kill -TERM "$child" 2>/dev/null' TERM INT
  local status=0
  wait "$child" || status=$?
  # wait returns early on a trapped signal; wait again for the real status.
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  exit "$status"
}

run() {
  build
  local work
  if [ -n "${BERTH_FRESH_REUSE:-}" ]; then
    # A kept run's tree, its clone moved to this checkout's HEAD: for iterating, not for a
    # verdict on a fresh machine.
    work=$BERTH_FRESH_REUSE
    echo "fresh-tree: reusing $work (not fresh), its clone reset to $(git -C "$repo" rev-parse --short HEAD)"
    git -C "$work/root/root/berth" fetch --quiet "$repo" HEAD
    git -C "$work/root/root/berth" reset --quiet --hard FETCH_HEAD
  else
    work=$(mktemp -d "${BERTH_FRESH_WORK:-/var/tmp}/berth-fresh.XXXXXX")
    prepare "$work/root"
  fi
  local root=$work/root
  local status=0
  unshare --mount --pid --uts --fork --kill-child=KILL \
    bash "$repo/scripts/fresh-tree.sh" __enter "$root" "$@" || status=$?
  if [ "${BERTH_FRESH_KEEP:-0}" = 1 ] || [ -n "${BERTH_FRESH_REUSE:-}" ]; then
    echo "fresh-tree: kept $work"
  else
    # The namespaces are gone with their PID 1, and every mount made inside with them.
    rm -rf --one-file-system "$work"
  fi
  echo "fresh-tree: exit $status"
  return "$status"
}

# A run's tree at $1: a copy of the pristine tree, this machine's network settings, rustup's
# proxies, and a clone of this checkout's HEAD at /root/berth.
prepare() {
  local root=$1
  echo "fresh-tree: copying the pristine tree to $root"
  cp -a "$pristine" "$root"
  # What this machine's network needs, as a new machine gets it from its provisioning: name
  # resolution, and the egress proxy's CA (taken into the trust store when test.sh's apt installs
  # ca-certificates) with pip told to use that store.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
  mkdir -p "$root/root/.cargo"
  cp -a "$HOME/.cargo/bin" "$root/root/.cargo/bin"
  echo "fresh-tree: cloning $(git -C "$repo" rev-parse --short HEAD) into /root/berth"
  git clone --quiet --no-hardlinks "$repo" "$root/root/berth"
}

case "${1:-}" in
  build) build ;;
  run)
    shift
    if [ "$#" -eq 0 ]; then set -- bash scripts/test.sh; fi
    run "$@"
    ;;
  __enter)
    shift
    enter "$@"
    ;;
  *)
    sed -n '2,26p' "$0" >&2
    exit 2
    ;;
esac
