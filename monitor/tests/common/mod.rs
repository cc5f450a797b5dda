//! The bundle harness shared by the real monitor tests (tests/monitor*.rs): a rootfs made from
//! the host's dynamic /bin/busybox and the libraries `ldd` names (or only berth-pause), a
//! `runc spec` config edited for the case, cgroupsPath `/berth-test/<id>`, and a Drop that runs
//! `runc delete --force` and removes the cgroup directories. Needs root and runc.
#![allow(dead_code)] // each test crate uses its own part of the harness

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::monitor::{self, ExitInfo, MonitorSpec};
use berth::oci::Runtime;

pub const MONITOR: &str = env!("CARGO_BIN_EXE_berth-monitor");

pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if berth::oci::resolve_binary(Path::new("runc")).is_none() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: needs runc and /bin/busybox");
        return false;
    }
    true
}

/// A bundle directory with its runc state root, cleaned up on drop.
pub struct Case {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub runtime: Runtime,
}

impl Case {
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn spec(&self, terminal: bool) -> MonitorSpec {
        MonitorSpec {
            id: self.id.clone(),
            bundle: self.bundle(),
            runtime: self.runtime.path.clone(),
            runtime_root: self.runtime.root.clone(),
            systemd_cgroup: false,
            log_path: Some(self.dir.path().join("logs/0.log")),
            exit_file: self.dir.path().join("exits").join(&self.id),
            pid_file: self.bundle().join("pidfile"),
            attach_socket: self.bundle().join("attach"),
            terminal,
            stdin: false,
            stdin_once: false,
            log_size_max: 0,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/0.log")).unwrap_or_default()
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.runtime.path)
            .arg("--root")
            .arg(&self.runtime.root)
            .args(["delete", "--force", &self.id])
            .output();
        for ctrl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(ctrl.path().join("berth-test").join(&self.id));
            let _ = std::fs::remove_dir(ctrl.path().join("berth-test"));
        }
    }
}

/// A bundle whose rootfs is busybox (with its libraries), or only berth-pause when `pause`.
pub fn case(name: &str, args: &[&str], terminal: bool, pause: bool) -> Case {
    let id = format!("berth-test-{name}-{}", std::process::id());
    let dir = tempfile::Builder::new().prefix("bm").tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    if pause {
        berth::pause::install(&rootfs).unwrap();
    } else {
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let ldd = std::process::Command::new("ldd").arg("/bin/busybox").output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let lib = line.split_whitespace().find(|w| w.starts_with('/'));
            if let Some(lib) = lib {
                let dest = rootfs.join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(lib, &dest).unwrap();
            }
        }
    }
    let out = std::process::Command::new("runc").arg("spec").arg("--bundle").arg(&bundle).output().unwrap();
    assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["process"]["terminal"] = serde_json::json!(terminal);
    cfg["root"]["path"] = serde_json::json!("rootfs");
    cfg["linux"]["cgroupsPath"] = serde_json::json!(format!("/berth-test/{id}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let runtime = Runtime::new("runc", "runc".into(), dir.path().join("runc-root")).unwrap();
    Case { id, dir, runtime }
}

pub async fn wait_exit(path: &Path) -> ExitInfo {
    wait_exit_within(path, Duration::from_secs(20)).await
}

/// [`wait_exit`] with a limit of the caller's (long-writing containers need more than 20 s).
pub async fn wait_exit_within(path: &Path, limit: Duration) -> ExitInfo {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(info) = monitor::read_exit_file(path).unwrap() {
            return info;
        }
        assert!(Instant::now() < deadline, "no exit file {path:?} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`case`] for a busybox container without a terminal.
pub fn case_with(name: &str, args: &[&str]) -> Case {
    case(name, args, false, false)
}

/// The monitor exits right after writing the exit file; it is not our child, so poll.
pub async fn assert_gone(pid: i32) {
    assert!(pid > 0, "monitor pid unknown");
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(Instant::now() < deadline, "monitor {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
