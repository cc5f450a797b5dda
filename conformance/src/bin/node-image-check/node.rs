//! A node container started from the node image with podman, as kind starts its nodes, and the
//! commands the checks run in it (`podman exec`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// CAP_SYS_RESOURCE's bit in `/proc/self/status` `CapEff`.
const CAP_SYS_RESOURCE: u32 = 24;
/// podman 4.3 lowers its own RLIMIT_NPROC to this when it cannot raise it (seen on this machine
/// kind), and runc can then give the container no more.
const PODMAN_NPROC: u64 = 32768;

/// A running node container, removed (with its anonymous `/var` volume) by [`Node::remove`].
pub struct Node {
    /// The container's name (also its hostname).
    pub name: String,
    /// PID of its init (systemd) on this machine: `/proc/<pid>/ns/net` is the node's network.
    pub pid: u32,
}

/// What [`Node::start`] needs besides the image.
pub struct RunOpts<'a> {
    pub image: &'a str,
    pub name: &'a str,
    /// Bound at the node's `/run/containerd`: the CRI socket appears here on this machine.
    pub cri_dir: &'a Path,
    /// Files bound read-only into the node: (host path, node path).
    pub files: Vec<(PathBuf, String)>,
}

/// `podman ARGS`, its stdout on success; the error names the command and carries its stderr.
pub fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running podman {} (Debian package podman)", args.join(" ")))?;
    if !out.status.success() {
        bail!("podman {} exited with {}: {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hard limits this process has, when it cannot raise them (no CAP_SYS_RESOURCE, as in a
/// sandbox): (RLIMIT_NOFILE, RLIMIT_NPROC). `None` when it can, or the files do not tell.
pub fn capped_limits() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let cap = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let eff = u64::from_str_radix(cap, 16).ok()?;
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return None;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let hard = |name: &str| -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().nth(1)?.parse().ok()
    };
    Some((hard("Max open files")?, hard("Max processes")?.min(PODMAN_NPROC)))
}

impl Node {
    /// `podman run` as kind runs a node (with docker or podman): privileged, systemd as PID 1 under
    /// the image's entrypoint, a cgroup namespace of its own (systemd in the node then sees its
    /// cgroup as the root, where runc's systemd driver looks for the scopes it asks for), tmpfs
    /// `/run` and `/tmp`, an anonymous volume at `/var` (berth's overlay upper dirs must not be
    /// on the node's own overlayfs), seccomp and AppArmor unconfined, `/lib/modules` when this
    /// machine has it. runc, not podman's default crun: crun refuses this machine's hybrid
    /// cgroups.
    ///
    /// `--systemd=false`: podman's systemd mode would bind the host's whole cgroup v1
    /// `name=systemd` hierarchy into the node, and the node's systemd would make its slices at
    /// the host's top (seen on this machine kind); without it the node's systemd stays in the
    /// container's own cgroup, as under docker.
    ///
    /// Where this machine cannot raise resource limits (no CAP_SYS_RESOURCE), the node gets
    /// this process's hard limits (podman's default of 1048576 open files would be refused),
    /// and berth.service a drop-in lowering its `LimitNOFILE` to them; `limits_dropin` is
    /// where that drop-in is written.
    pub fn start(o: &RunOpts, limits_dropin: &Path) -> Result<Node> {
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            o.name,
            "--hostname",
            o.name,
            "--label",
            "berth-node-check=1",
            "--privileged",
            "--systemd=false",
            "--cgroupns=private",
            "--runtime",
            "runc",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/run",
            "--volume",
            "/var",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if Path::new("/lib/modules").is_dir() {
            args.extend(["--volume".into(), "/lib/modules:/lib/modules:ro".into()]);
        }
        args.extend(["--volume".into(), format!("{}:/run/containerd", o.cri_dir.display())]);
        for (host, node) in &o.files {
            args.extend(["--volume".into(), format!("{}:{node}:ro", host.display())]);
        }
        if let Some((nofile, nproc)) = capped_limits() {
            eprintln!("  no CAP_SYS_RESOURCE here: the node gets nofile {nofile}, nproc {nproc}, berth LimitNOFILE={nofile}");
            std::fs::write(limits_dropin, format!("[Service]\nLimitNOFILE={nofile}\n"))?;
            args.extend([
                "--ulimit".into(),
                format!("nofile={nofile}:{nofile}"),
                "--ulimit".into(),
                format!("nproc={nproc}:{nproc}"),
                "--volume".into(),
                format!("{}:/etc/systemd/system/berth.service.d/90-limits.conf:ro", limits_dropin.display()),
            ]);
        }
        args.push(o.image.to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        podman(&refs)?;
        let pid = podman(&["inspect", "--format", "{{.State.Pid}}", o.name])?;
        let pid = pid.trim().parse().with_context(|| format!("podman inspect {}: pid {pid:?}", o.name))?;
        Ok(Node { name: o.name.to_string(), pid })
    }

    /// `podman exec NODE ARGS`: stdout on success, else an error with the exit status and stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        podman(&all)
    }

    /// `podman exec -i NODE ARGS` with `input` on stdin (as `kind load` pipes an archive).
    pub fn exec_stdin(&self, args: &[&str], input: &Path) -> Result<String> {
        let out = Command::new("podman")
            .args(["exec", "-i", &self.name])
            .args(args)
            .stdin(std::fs::File::open(input).with_context(|| format!("open {}", input.display()))?)
            .output()
            .context("running podman exec -i")?;
        if !out.status.success() {
            bail!(
                "podman exec -i {} {} exited with {}: {}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node's journal for `unit` (last `n` lines), for failure reports.
    pub fn journal(&self, unit: &str, n: usize) -> String {
        self.exec(&["journalctl", "--no-pager", "-o", "cat", "-n", &n.to_string(), "-u", unit])
            .unwrap_or_else(|e| format!("(journalctl: {e:#})"))
    }

    /// `podman rm --force --volumes`: stops systemd (SIGRTMIN+3, then SIGKILL) and removes the
    /// container and its `/var` volume.
    pub fn remove(&self) -> Result<()> {
        podman(&["rm", "--force", "--time", "10", "--volumes", &self.name]).map(|_| ())
    }
}
