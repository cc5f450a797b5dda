#!/usr/bin/env bash
# The cgroup v2 test lane: a small Debian 12 guest (systemd as PID 1, cgroup v2 only) booted with
# QEMU, with this checkout shared in read-only over 9p at the same absolute path, so the binaries
# built here (berth, berth-monitor, the conformance suite, its NRI test plugin) run there unchanged.
#
#   bash scripts/v2-guest.sh build            # debootstrap the guest and make its disk (once)
#   bash scripts/v2-guest.sh run [FILTER...]   # boot a fresh copy, run the conformance suite
#                                              # (cases whose names contain a FILTER), power off
#   bash scripts/v2-guest.sh run --kubelet PATH # kubelet-check there: a real kubelet on berth
#   bash scripts/v2-guest.sh run --nested [FILTER...]  # the suite in a nested cgroup namespace
#   bash scripts/v2-guest.sh probe             # say whether and how this machine can run the guest
#
# `run` prints the guest's output and exits with the suite's status. Every run boots a copy of
# the pristine disk, so runs never see each other's leftovers. Needs root (debootstrap, 9p
# passthrough). The workspace must be built first (`cargo build --workspace --bins` and
# `cargo test -p berth-conformance --test cri --no-run`).
#
# Env: BERTH_V2_DIR (default /var/cache/berth-test/v2-guest) holds the guest;
# BERTH_V2_ACCEL=kvm|tcg overrides the probe; BERTH_V2_TIMEOUT (s, default 3600) bounds a boot;
# BERTH_V2_WEDGED (s, default 300): a CPU stuck that long ends the boot, retried once (boot());
# BERTH_V2_ENV: extra `NAME=value` lines for the suite's environment inside the guest.
# docs/cgroups.md says what runs where and how long it takes.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
dir=${BERTH_V2_DIR:-/var/cache/berth-test/v2-guest}
tree=$dir/tree
disk=$dir/disk.img
export DEBIAN_FRONTEND=noninteractive

# What the guest needs to run berth and the conformance suite on its own loopback: the same
# packages scripts/install-deps.sh puts on the host (minus containerd, the Rust toolchain and
# compilers, which stay on the host), plus a kernel, systemd, D-Bus and AppArmor's parser (the
# Debian kernel enables AppArmor, so berth loads its profile there).
guest_packages=(
  systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools apparmor
  runc containernetworking-plugins docker-registry busybox iproute2 iptables
  util-linux mount procps ca-certificates openssl e2fsprogs
)

need_host_tools() {
  local missing=()
  [ -x /usr/bin/qemu-system-x86_64 ] || missing+=(qemu-system-x86)
  [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  [ -x /sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "v2-guest: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
  fi
}

build() {
  need_host_tools
  if [ -f "$disk" ] && [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$(stamp)" ]; then
    echo "v2-guest: $disk is up to date"
    return
  fi
  rm -rf "$tree" "$disk" "$dir/stamp"
  mkdir -p "$dir"
  echo "v2-guest: debootstrap bookworm into $tree (a few minutes)"
  local pkgs
  pkgs=$(IFS=,; echo "${guest_packages[*]}")
  debootstrap --variant=minbase --include="$pkgs" bookworm "$tree" http://deb.debian.org/debian \
    >"$dir/debootstrap.log" 2>&1 || { tail -30 "$dir/debootstrap.log" >&2; exit 1; }

  echo berth-v2 >"$tree/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 berth-v2\n' >"$tree/etc/hosts"
  printf '/dev/vda / ext4 rw,relatime 0 1\n' >"$tree/etc/fstab"
  # No network interface in the guest: pods live on the bridge berth's CNI config makes inside it.
  # resolv.conf must exist (berth copies it into pods).
  printf 'nameserver 127.0.0.53\n' >"$tree/etc/resolv.conf"
  # Root logs in on the serial console without a password (only for debugging a lane by hand).
  chroot "$tree" passwd -d root >/dev/null

  install -m 0755 /dev/stdin "$tree/usr/local/sbin/berth-lane" <<'LANE'
#!/bin/bash
# Runs once at boot: mounts the lane's 9p shares, runs /lane/cmd.sh, records its status, powers off.
mkdir -p /lane
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 lane /lane || { systemctl poweroff; exit 1; }
. /lane/env
mkdir -p "$REPO"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro repo "$REPO"
{
  echo "== guest: kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), $(nproc) CPUs"
  bash /lane/cmd.sh
} >/lane/log 2>&1 </dev/null
echo $? >/lane/rc.tmp
sync
mv /lane/rc.tmp /lane/rc
sync
systemctl poweroff --no-block
LANE
  cat >"$tree/etc/systemd/system/berth-lane.service" <<'UNIT'
[Unit]
Description=berth test lane (scripts/v2-guest.sh)
After=local-fs.target systemd-udev-settle.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/berth-lane
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
UNIT
  mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
  ln -sf /etc/systemd/system/berth-lane.service "$tree/etc/systemd/system/multi-user.target.wants/"
  # A quiet, quick boot: no getty on the console racing the lane's output.
  chroot "$tree" systemctl mask getty@tty1.service serial-getty@ttyS0.service >/dev/null 2>&1 || true
  chroot "$tree" apt-get clean

  local kver
  kver=$(basename "$(ls -d "$tree"/lib/modules/* | head -1)")
  cp "$tree/boot/vmlinuz-$kver" "$dir/vmlinuz"
  cp "$tree/boot/initrd.img-$kver" "$dir/initrd.img"
  echo "v2-guest: making $disk from the tree"
  local size_mb
  size_mb=$(( $(du -sm "$tree" | cut -f1) + 6144 ))
  mkfs.ext4 -q -F -L berth-v2 -d "$tree" "$disk" "${size_mb}M"
  stamp >"$dir/stamp"
  echo "v2-guest: built ($kver, $(du -sh --apparent-size "$disk" | cut -f1) disk)"
}

# What the built guest depends on: this script's guest part. A change to it rebuilds the guest.
stamp() {
  sed -n '/^guest_packages=/,/^}/p; /^build()/,/^}/p' "$0" | sha256sum | cut -c1-16
}

# KVM here: /dev/kvm exists, but on nested-virtualised hosts without vmx/svm passed through a
# stock kernel does not boot (QEMU aborts setting an MSR with -cpu host, hangs with kvm64), so the
# probe boots the guest's kernel for real and falls back to TCG (software emulation).
probe_accel() {
  if [ -n "${BERTH_V2_ACCEL:-}" ]; then echo "$BERTH_V2_ACCEL"; return; fi
  if [ -c /dev/kvm ] && [ -f "$dir/vmlinuz" ]; then
    local out
    out=$(timeout 20 qemu-system-x86_64 -machine q35,accel=kvm -cpu host -m 256 -display none \
      -no-reboot -serial stdio -kernel "$dir/vmlinuz" -append "console=ttyS0 panic=-1 quiet" 2>&1 || true)
    # The kernel got far enough to look for its root disk: KVM works.
    if grep -q -e 'VFS: Cannot open root' -e 'Kernel panic' <<<"$out"; then echo kvm; return; fi
  fi
  echo tcg
}

run() {
  build   # at once when the guest is up to date; rebuilt when this script's guest part changed
  local accel cpu
  accel=$(probe_accel)
  if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
  local suite
  suite=$(cd "$repo" && cargo test -p berth-conformance --test cri --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cri" and m.get("executable"):
        print(m["executable"])')
  [ -x "$suite" ] || { echo "v2-guest: conformance suite not built (cargo test -p berth-conformance --test cri --no-run)" >&2; exit 1; }
  # `run --kubelet PATH`: kubelet-check (a real kubelet on berth) instead of the suite.
  local program=$suite extra=() args=("$@") what="suite: ${*:-all cases}" setup=: wrap=
  if [ "${1:-}" = --nested ]; then
    # berth as in a kind node or a dind container: in a cgroup namespace whose root is a
    # non-root cgroup holding processes (berth delegates controllers itself, cgroups::nest).
    shift
    args=("$@")
    what="suite nested in a cgroup namespace: ${*:-all cases}"
    # As a container engine does for a container's cgroup: the controllers are delegated to it.
    setup='for c in cpu io memory pids; do echo +$c > /sys/fs/cgroup/cgroup.subtree_control; done; mkdir -p /sys/fs/cgroup/node && echo $$ > /sys/fs/cgroup/node/cgroup.procs'
    wrap="unshare --cgroup --mount --fork sh -c 'umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"\$0\" \"\$@\"' "
  elif [ "${1:-}" = --kubelet ]; then
    [ -x "${2:-}" ] || { echo "v2-guest: --kubelet needs the path of a kubelet binary" >&2; exit 2; }
    program=$repo/target/debug/kubelet-check
    extra=("$2")
    args=(--kubelet /lane/bin/"$(basename "$2")")
    what="kubelet-check with $2"
    # kubelet wants the node's IP from a default route; the guest has no network, so a dummy
    # interface gives it one (nothing is ever sent there).
    setup='ip link add dummy0 type dummy && ip addr add 192.0.2.10/24 dev dummy0 && ip link set dummy0 up && ip route add default via 192.0.2.1'
  fi
  [ -x "$repo/target/debug/berth" ] && [ -x "$repo/target/debug/berth-monitor" ] || { echo "v2-guest: target/debug/berth and berth-monitor not built (cargo build --workspace --bins)" >&2; exit 1; }

  local lane
  lane=$(mktemp -d /tmp/berth-v2-lane.XXXXXX)
  local img=$lane/disk.img
  # The binaries this run tests, copied: a rebuild on the host while the guest runs (the suite
  # restarts berth) must not mix two builds in one run.
  mkdir -p "$lane/bin"
  cp "$repo/target/debug/berth" "$repo/target/debug/berth-monitor" "$program" "${extra[@]}" "$lane/bin/"
  # The suite's NRI test plugin, which berth launches from its plugin directory (cases/nri.rs
  # looks for it beside berth).
  if [ -x "$repo/target/debug/nri-test-plugin" ]; then cp "$repo/target/debug/nri-test-plugin" "$lane/bin/"; fi
  {
    printf 'REPO=%q\n' "$repo"
  } >"$lane/env"
  {
    echo "set -u"
    echo "cd $(printf %q "$repo")"
    echo "export BERTH_BIN=/lane/bin/berth"
    echo "$setup"
    printf '%s\n' "${BERTH_V2_ENV:-}" | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*=.*\)$/export \1/p'
    printf 'exec %s/lane/bin/%q' "$wrap" "$(basename "$program")"
    local f
    for f in "${args[@]}"; do printf ' %q' "$f"; done
    echo
  } >"$lane/cmd.sh"

  local attempt=1 rc qrc
  while :; do
    qrc=0
    boot "$accel" "$cpu" "$lane" "$what" || qrc=$?
    if [ -f "$lane/rc" ]; then
      rc=$(cat "$lane/rc")
      break
    fi
    rc=1
    if [ "$qrc" = "$wedged" ] && [ "$attempt" -lt 2 ]; then
      # A wedged guest kernel says nothing about berth (no process can lock up a CPU for
      # minutes), so the lane boots a fresh guest once more. The first console is kept.
      cp "$lane/console.log" "$lane/console.wedged.log"
      echo "v2-guest: the guest's kernel wedged (console above): booting a fresh guest once more; the suite's lines before it do not count (no closing line)" >&2
      attempt=$((attempt + 1))
      continue
    fi
    break
  done
  # The disk copy and binaries are never worth keeping; the log and console are, after a failure.
  rm -rf "$img" "$lane/bin"
  if [ "$rc" = 0 ] && [ -z "${BERTH_TEST_KEEP:-}" ] && [ "$attempt" = 1 ]; then rm -rf "$lane"; else echo "v2-guest: log and console kept in $lane"; fi
  return "$rc"
}

# qemu's status when boot() ended a wedged guest.
wedged=125

# Boots the guest once on a fresh copy of the disk and streams the suite's output. Returns qemu's
# status, or $wedged when the guest's kernel reported a CPU stuck for BERTH_V2_WEDGED seconds
# (default 300; its watchdog says "soft lockup - CPU#N stuck for Ns"): such a guest never comes
# back (seen once in CI under TCG, both vCPUs stuck for an hour in a CNI ADD), so it is ended
# at once rather than at BERTH_V2_TIMEOUT.
boot() {
  local accel=$1 cpu=$2 lane=$3 what=$4
  local img=$lane/disk.img
  # (Called as `boot ... || qrc=$?`, so set -e is off in here: each step checks for itself.)
  rm -f "$lane/rc" "$lane/rc.tmp"
  cp --sparse=always "$disk" "$img" || return 1
  echo "v2-guest: booting ($accel, 2 CPUs, 4 GiB) with $repo shared in; $what"
  local start=$SECONDS
  : >"$lane/log"
  : >"$lane/console.log"
  tail -n +1 -f "$lane/log" &
  local tailer=$!
  # loglevel=5, not quiet: a kernel warning comes with its stack trace, for a failure's report.
  timeout "${BERTH_V2_TIMEOUT:-3600}" qemu-system-x86_64 \
    -machine q35,accel="$accel" -cpu "$cpu" -smp 2 -m 4096 \
    -display none -no-reboot -nic none -serial file:"$lane/console.log" \
    -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 loglevel=5" \
    -drive file="$img",if=virtio,format=raw,cache=unsafe \
    -virtfs local,path="$repo",mount_tag=repo,security_model=passthrough,readonly=on \
    -virtfs local,path="$lane",mount_tag=lane,security_model=passthrough &
  local qemu=$! qrc stuck=
  while kill -0 "$qemu" 2>/dev/null; do
    sleep 10
    stuck=$(sed -n 's/.*soft lockup - CPU#[0-9]* stuck for \([0-9]*\)s.*/\1/p' "$lane/console.log" | sort -n | tail -1)
    if [ -n "$stuck" ] && [ "$stuck" -ge "${BERTH_V2_WEDGED:-300}" ]; then
      # timeout(1) is qemu's parent here: ending it ends qemu too.
      kill "$qemu" 2>/dev/null || true
      break
    fi
    stuck=
  done
  qrc=0
  wait "$qemu" || qrc=$?
  sleep 0.5
  kill "$tailer" 2>/dev/null || true
  wait "$tailer" 2>/dev/null || true
  if [ -f "$lane/rc" ]; then
    echo "v2-guest: suite exited $(cat "$lane/rc") after $((SECONDS - start)) s in the guest ($accel)"
  elif [ -n "$stuck" ]; then
    echo "v2-guest: the guest's kernel reports a CPU stuck for ${stuck} s, $((SECONDS - start)) s after boot; its console from the first report:" >&2
    grep -m1 -A60 -e 'soft lockup' -e 'rcu: INFO' "$lane/console.log" >&2 || true
    return "$wedged"
  else
    echo "v2-guest: the guest stopped without a result (qemu status $qrc after $((SECONDS - start)) s); its console:" >&2
    tail -60 "$lane/console.log" >&2 || true
  fi
  return "$qrc"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  probe) need_host_tools; echo "v2-guest: accelerator $(probe_accel)" ;;
  *) echo "usage: $0 build | run [FILTER...] | probe" >&2; exit 2 ;;
esac
