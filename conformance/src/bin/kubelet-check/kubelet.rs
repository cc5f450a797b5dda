//! Starting a standalone kubelet on berth, reading its read-only API, and undoing what kubelet
//! leaves on the host (its cgroups under `kubepods`, `/var/log/pods` and `/var/log/containers`).

use anyhow::{bail, Context, Result};
use berth_conformance::http;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A kubelet this run started.
pub struct Kubelet {
    /// `staticPodPath`.
    pub manifests: PathBuf,
    /// kubelet's stderr (klog).
    pub log: PathBuf,
    /// The read-only HTTP port on 127.0.0.1 (`/pods`).
    read_only_port: u16,
}

/// Starts `bin` in standalone mode against the CRI socket `socket`, everything under `tmp`;
/// `port` is its authenticated API port (loopback only, anonymous and unused here).
pub fn start(bin: &Path, tmp: &Path, socket: &Path, port: u16) -> Result<(Kubelet, Child)> {
    let manifests = tmp.join("manifests");
    let root = tmp.join("kubelet");
    std::fs::create_dir_all(&manifests)?;
    std::fs::create_dir_all(&root)?;
    let read_only_port = berth_conformance::registry::free_port()?;
    // Thresholds near zero: a busy test disk must not make kubelet evict the pod under test.
    let config = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 2s
syncFrequency: 5s
cgroupDriver: {driver}
failSwapOn: false
address: 127.0.0.1
port: {port}
readOnlyPort: {read_only_port}
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        manifests = manifests.display(),
        driver = if berth_conformance::cgroups::systemd() { "systemd" } else { "cgroupfs" },
    );
    let config_path = tmp.join("kubelet.yaml");
    std::fs::write(&config_path, config)?;
    let log = tmp.join("kubelet.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .arg(format!("--config={}", config_path.display()))
        .arg(format!("--container-runtime-endpoint=unix://{}", socket.display()))
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--hostname-override={}", crate::NODE))
        .arg("--v=1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    Ok((Kubelet { manifests, log, read_only_port }, child))
}

impl Kubelet {
    /// `GET /pods` on the read-only port: the static pods with the status kubelet computed.
    pub fn pods(&self) -> Result<Vec<serde_json::Value>> {
        let r = http::request(&format!("127.0.0.1:{}", self.read_only_port), "GET", "/pods", None, b"")?;
        if r.status != 200 {
            bail!("kubelet /pods answered {}", r.status);
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).context("kubelet /pods is not JSON")?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The pod named `name` in [`crate::NAMESPACE`], as `/pods` shows it.
    pub fn pod(&self, name: &str) -> Result<Option<serde_json::Value>> {
        Ok(self.pods()?.into_iter().find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == crate::NAMESPACE))
    }

    /// klog error lines (`E` + MMDD) of kubelet's log.
    pub fn error_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.len() > 5 && l.starts_with('E') && l[1..5].bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
            .collect()
    }
}

/// `kubepods` cgroup directories present now, one per mounted hierarchy (cgroupfs driver), and
/// `kubepods.slice` (systemd driver on cgroup v2).
pub fn kubepods_cgroups() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("kubepods")).filter(|p| p.is_dir()).collect();
    for top in ["/sys/fs/cgroup/kubepods", "/sys/fs/cgroup/kubepods.slice"] {
        if Path::new(top).is_dir() {
            v.push(PathBuf::from(top));
        }
    }
    v
}

/// Removes the `kubepods` trees that were not there before the run: `systemctl stop` for
/// kubelet's `kubepods.slice` (systemd driver), rmdir deepest first for cgroupfs directories.
pub fn remove_created_cgroups(before: &[PathBuf]) {
    for dir in kubepods_cgroups() {
        if before.contains(&dir) {
            continue;
        }
        if dir.extension().is_some_and(|e| e == "slice") {
            match Command::new("systemctl").arg("stop").arg(dir.file_name().unwrap_or_default()).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("teardown: systemctl stop {}: {other:?}", dir.display()),
            }
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&dir, &mut dirs);
        for d in dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("teardown: rmdir {}: {e}", d.display());
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Removes the container log directories and links kubelet made for our namespace.
pub fn remove_pod_logs() {
    let prefix = format!("{}_", crate::NAMESPACE);
    if let Ok(rd) = std::fs::read_dir("/var/log/pods") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let infix = format!("_{}_", crate::NAMESPACE);
    if let Ok(rd) = std::fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().contains(&infix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
