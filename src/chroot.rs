//! Is berth running in a chroot? A container runtime cannot work there, and must not try.
//!
//! "In a chroot" is the kernel's own test (`current_chrooted()`, fs/namespace.c): the process's
//! root directory is not the root of its mount namespace. That is so after `chroot DIR` or
//! `unshare --root DIR`, and not after `pivot_root`, which is how container runtimes, kind's node
//! containers and systemd-nspawn enter a tree. Two things then break, both seen with runc 1.1:
//!
//! - **exec lands outside the container.** `setns(CLONE_NEWNS)` sets the joining process's root to
//!   the namespace's root, and `runc pivot_root`s only the container's own root. So `runc exec`
//!   (ExecSync, Exec, the self-test) runs in the *machine's* root filesystem: its `/proc`, its
//!   `/etc/resolv.conf`, its cgroup files, none of the container's mounts. That is a container
//!   escape, not only a wrong answer.
//! - **No user namespaces.** `unshare(CLONE_NEWUSER)` fails with EPERM in a chroot
//!   (user_namespaces(7)), so every user-namespaced pod fails.
//!
//! The test: a short-lived thread takes a filesystem context of its own (`unshare(CLONE_FS)`),
//! joins its own mount namespace (`setns`, which moves its root to the namespace's root) and
//! compares that root with the process's: the device and inode of `/`, and the mount ID of the
//! topmost mount on `/` in each one's `mountinfo` (a chroot into a bind mount of the namespace's
//! root has the same inode, but another mount).

use std::os::unix::fs::MetadataExt;

/// Errors of [`in_chroot`]: a step of the test failed (no `/proc`, no CAP_SYS_ADMIN).
#[derive(Debug, thiserror::Error)]
#[error("cannot tell whether berth runs in a chroot: {step}: {source}")]
pub struct ChrootCheckError {
    /// The step that failed: `stat /`, `open /proc/self/ns/mnt`, `unshare(CLONE_FS)`, `setns`.
    pub step: &'static str,
    /// The system's error.
    #[source]
    pub source: std::io::Error,
}

fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> ChrootCheckError {
    move |source| ChrootCheckError { step, source }
}

fn errno(step_name: &'static str) -> impl FnOnce(nix::Error) -> ChrootCheckError {
    move |e| ChrootCheckError { step: step_name, source: std::io::Error::from(e) }
}

/// True when this process's root directory is not the root of its mount namespace (see the
/// module docs). Needs CAP_SYS_ADMIN and CAP_SYS_CHROOT (setns into a mount namespace) and
/// `/proc`. Errors: [`ChrootCheckError`] naming the failed step.
pub fn in_chroot() -> Result<bool, ChrootCheckError> {
    let ours = std::fs::metadata("/").map_err(step("stat /"))?;
    let our_mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(step("read /proc/self/mountinfo"))?;
    let ns = std::fs::File::open("/proc/self/ns/mnt").map_err(step("open /proc/self/ns/mnt"))?;
    let (theirs, their_mountinfo) = std::thread::scope(|s| {
        s.spawn(|| {
            // This thread's fs context is its own from here on: the setns below moves its root
            // and cwd only, and the thread ends right after.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(errno("unshare(CLONE_FS)"))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(errno("setns(CLONE_NEWNS) into our own mount namespace"))?;
            let root = std::fs::metadata("/").map_err(step("stat / at the mount namespace's root"))?;
            // mountinfo is relative to the root of the task whose file is opened, when opened.
            let info = std::fs::read_to_string("/proc/thread-self/mountinfo")
                .map_err(step("read /proc/thread-self/mountinfo at the mount namespace's root"))?;
            Ok((root, info))
        })
        .join()
        .unwrap_or_else(|_| Err(ChrootCheckError { step: "the check's thread", source: std::io::Error::other("panicked") }))
    })?;
    let same_inode = (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino());
    let our_root = root_mount_id(&our_mountinfo);
    Ok(!same_inode || our_root.is_none() || our_root != root_mount_id(&their_mountinfo))
}

/// The mount ID (field 1 of proc(5)'s mountinfo) of the topmost mount on `/`, if one is listed.
/// Mounts that are not reachable from the reader's root are not listed.
fn root_mount_id(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().rev().find(|l| l.split(' ').nth(4) == Some("/")).and_then(|l| l.split(' ').next())
}

/// The error berth stops with when [`in_chroot`] says yes: what is wrong and what to do.
pub const IN_CHROOT_MESSAGE: &str = "berth is running in a chroot: its root directory is not the root of its mount \
namespace. There, `runc exec` (ExecSync, Exec) would run in the mount namespace's root, outside the container, and \
the kernel refuses user namespaces. Enter the tree with pivot_root instead (`unshare --mount` then `pivot_root`, as \
container runtimes, kind's node containers and systemd-nspawn do), or run berth outside the chroot";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_in_chroot_here() {
        // The test process runs at its mount namespace's root (or, unprivileged, cannot tell).
        match in_chroot() {
            Ok(chrooted) => assert!(!chrooted),
            Err(e) => assert!(e.step.starts_with("setns") || e.step.starts_with("unshare"), "{e}"),
        }
    }

    #[test]
    fn detects_a_chroot() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // A child chroots into a bind mount of / (so it is a mount point and holds /proc) in a
        // mount namespace of its own, then runs this test's check there.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"d=$(mktemp -d) && mount --rbind / "$d" && { chroot "$d" "$0" --exact chroot::tests::probe_child --nocapture; s=$?; umount -R "$d"; rmdir "$d"; exit $s; }"#)
            .arg(&exe)
            .env("BERTH_TEST_CHROOT_PROBE", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("probe: chrooted=true"), "{text}");
    }

    /// Run by `detects_a_chroot` inside its chroot; a no-op otherwise.
    #[test]
    fn probe_child() {
        if std::env::var_os("BERTH_TEST_CHROOT_PROBE").is_some() {
            println!("probe: chrooted={}", in_chroot().unwrap());
        }
    }
}
