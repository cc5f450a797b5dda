//! berth inside a container (a kind node, docker-in-docker style), cgroupfs driver, cgroup v2.
//!
//! The container gets its own cgroup namespace, so `/sys/fs/cgroup` is the container's cgroup,
//! and berth (maybe with a shell or an init) is in it. cgroup v2's "no internal processes" rule
//! (cgroup-v2.rst) forbids enabling controllers for children of a cgroup that holds processes,
//! unless it is the real root. So runc cannot give pods memory or CPU limits there: writing
//! `+memory` to `cgroup.subtree_control` fails with EBUSY. moby's dind entrypoint and kind's node
//! entrypoint fix this the same way, and berth does too when it starts:
//!
//! 1. move every process of the namespace's root cgroup into a child, `init`;
//! 2. enable every available controller in the root's `cgroup.subtree_control`.
//!
//! It does this only when all of these hold:
//! - cgroup v2;
//! - berth's own cgroup is the namespace's root (`0::/`): under systemd, berth is in a service's
//!   cgroup, and systemd manages delegation;
//! - that root is not the machine's real root. A real root has no `cgroup.type`, and the rule
//!   exempts it.

use std::path::Path;

/// The child cgroup the root's processes move to (moby's dind entrypoint uses the same name).
pub const INIT_CGROUP: &str = "init";

/// What [`delegate_if_nested`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nesting {
    /// Not nested (cgroup v1, the real root, or berth not at the namespace's root): nothing done.
    NotNested,
    /// Every controller was enabled already: nothing done.
    AlreadyDelegated,
    /// Moved `moved` processes to `init`, enabled `enabled` (controller names); `failed` holds
    /// each controller that could not be enabled, with the error.
    Delegated { moved: usize, enabled: Vec<String>, failed: Vec<String> },
}

/// Does the delegation described in the module docs under the cgroup v2 mount `root` (normally
/// `/sys/fs/cgroup`), given berth's `/proc/self/cgroup` text. Errors name the file that could not
/// be written; a process that exits while being moved is skipped.
pub fn delegate_if_nested(root: &Path, self_cgroup: &str) -> Result<Nesting, String> {
    let v2 = root.join("cgroup.controllers").exists();
    let at_ns_root = self_cgroup.lines().any(|l| l == "0::/");
    let real_root = !root.join("cgroup.type").exists();
    if !v2 || !at_ns_root || real_root {
        return Ok(Nesting::NotNested);
    }
    let read = |f: &str| std::fs::read_to_string(root.join(f)).map_err(|e| format!("reading {}: {e}", root.join(f).display()));
    let available: Vec<String> = read("cgroup.controllers")?.split_whitespace().map(str::to_string).collect();
    let enabled_now = read("cgroup.subtree_control")?;
    let missing: Vec<String> = available.iter().filter(|c| !enabled_now.split_whitespace().any(|e| e == c.as_str())).cloned().collect();
    if missing.is_empty() {
        return Ok(Nesting::AlreadyDelegated);
    }
    let init = root.join(INIT_CGROUP);
    std::fs::create_dir_all(&init).map_err(|e| format!("creating {}: {e}", init.display()))?;
    let mut moved = 0;
    for pid in read("cgroup.procs")?.split_whitespace() {
        // One PID per write (cgroup.procs takes one at a time); one that exited meanwhile is gone.
        match std::fs::write(init.join("cgroup.procs"), pid) {
            Ok(()) => moved += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(format!("moving pid {pid} to {}: {e}", init.display())),
        }
    }
    // One controller per write: the kernel applies a line all or nothing.
    let control = root.join("cgroup.subtree_control");
    let (mut enabled, mut failed) = (Vec::new(), Vec::new());
    for c in missing {
        match std::fs::write(&control, format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) => failed.push(format!("{c}: {e}")),
        }
    }
    Ok(Nesting::Delegated { moved, enabled, failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(controllers: &str, enabled: &str, procs: &str, nested: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(d.path().join("cgroup.subtree_control"), enabled).unwrap();
        std::fs::write(d.path().join("cgroup.procs"), procs).unwrap();
        if nested {
            std::fs::write(d.path().join("cgroup.type"), "domain\n").unwrap();
        }
        d
    }

    #[test]
    fn delegates_only_at_a_nested_namespace_root() {
        let real = tree("cpu memory\n", "\n", "1\n", false);
        assert_eq!(delegate_if_nested(real.path(), "0::/\n").unwrap(), Nesting::NotNested);
        let nested = tree("cpu io memory pids\n", "\n", "1\n7\n", true);
        assert_eq!(delegate_if_nested(nested.path(), "0::/system.slice/berth.service\n").unwrap(), Nesting::NotNested);
        let done = tree("cpu memory\n", "cpu memory\n", "1\n", true);
        assert_eq!(delegate_if_nested(done.path(), "0::/\n").unwrap(), Nesting::AlreadyDelegated);
        let r = delegate_if_nested(nested.path(), "0::/\n").unwrap();
        let all = ["cpu", "io", "memory", "pids"].map(String::from).to_vec();
        assert_eq!(r, Nesting::Delegated { moved: 2, enabled: all, failed: vec![] });
        // A plain directory stands in for cgroupfs here: the last write is what it holds.
        assert_eq!(std::fs::read_to_string(nested.path().join("init/cgroup.procs")).unwrap(), "7");
        assert_eq!(std::fs::read_to_string(nested.path().join("cgroup.subtree_control")).unwrap(), "+pids");
    }
}
