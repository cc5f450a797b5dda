//! Real test of the monitor's log size limit (config `log_size_max`) with berth-monitor + runc
//! (needs root, runc and /bin/busybox; skipped otherwise). The bundle is built as in
//! tests/monitor.rs; everything is removed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use berth::monitor::{self, MonitorSpec};
use berth::oci::Runtime;

const MONITOR: &str = env!("CARGO_BIN_EXE_berth-monitor");

struct Case {
    id: String,
    dir: tempfile::TempDir,
    runtime: Runtime,
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

fn can_run() -> bool {
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

fn case(name: &str, args: &[&str]) -> Case {
    let id = format!("berth-test-{name}-{}", std::process::id());
    let dir = tempfile::Builder::new().prefix("bmr").tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let ldd = std::process::Command::new("ldd").arg("/bin/busybox").output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
            let dest = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
    let out = std::process::Command::new("runc").arg("spec").arg("--bundle").arg(&bundle).output().unwrap();
    assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["path"] = serde_json::json!("rootfs");
    cfg["linux"]["cgroupsPath"] = serde_json::json!(format!("/berth-test/{id}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let runtime = Runtime::new("runc", "runc".into(), dir.path().join("runc-root")).unwrap();
    Case { id, dir, runtime }
}

/// A container writes 3000 numbered lines (about 120 KB of records) with `log_size_max` 8192:
/// the log file ends no larger than the limit, holds only whole records, and holds the last lines
/// in order, ending with the last one; the first lines were dropped when the file started over.
#[tokio::test]
async fn log_starts_over_at_the_size_limit() {
    if !can_run() {
        return;
    }
    let c = case("logsize", &["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done"]);
    let bundle = c.dir.path().join("bundle");
    let spec = MonitorSpec {
        id: c.id.clone(),
        bundle: bundle.clone(),
        runtime: c.runtime.path.clone(),
        runtime_root: c.runtime.root.clone(),
        log_path: Some(c.dir.path().join("logs/0.log")),
        exit_file: c.dir.path().join("exit"),
        pid_file: bundle.join("pidfile"),
        attach_socket: bundle.join("attach"),
        terminal: false,
        stdin: false,
        stdin_once: false,
        log_size_max: 8192,
    };
    let log = spec.log_path.clone().unwrap();
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        if let Some(i) = monitor::read_exit_file(&spec.exit_file).unwrap() {
            break i;
        }
        assert!(Instant::now() < deadline, "container did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info.exit_code, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawned.monitor_pid), None).is_ok() {
        assert!(Instant::now() < deadline, "monitor still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() <= 8192, "log is {} bytes, over the 8192 limit", text.len());
    assert!(text.ends_with('\n'), "log ends inside a record");
    let numbers: Vec<usize> = text
        .lines()
        .map(|rec| {
            let parts: Vec<&str> = rec.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "not a CRI record: {rec:?}");
            assert_eq!((parts[1], parts[2]), ("stdout", "F"), "record {rec:?}");
            let n = parts[3].strip_prefix("line ").unwrap_or_else(|| panic!("record {rec:?}"));
            n.parse().unwrap_or_else(|_| panic!("record {rec:?}"))
        })
        .collect();
    assert_eq!(numbers.last(), Some(&2999), "the last line is in the current file");
    assert!(numbers[0] > 0, "the first lines were dropped");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "lines are consecutive");
    assert!(!log.with_extension("log.tmp").exists(), "no leftover temporary file");
}
