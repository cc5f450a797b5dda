//! Root-only: generated specs run under the real runc (1.1.5 on this machine). An infra process
//! (berth-pause) is started from [`infra_spec`] in a pinned netns, then a busybox container from
//! [`container_spec`] joins it and reports what it sees. Everything created is removed: runc
//! containers (by id), the netns, the shm tmpfs, the cgroup parent, the temp dirs.

use super::*;
use crate::image::ImageRuntimeConfig;
use std::process::{Command, Stdio};

const RUNC: &str = "/usr/sbin/runc";

struct Cleanup {
    runc_root: PathBuf,
    ids: Vec<String>,
    netns: Option<String>,
    shm: Option<PathBuf>,
    cgroup_parent: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in self.ids.iter().rev() {
            let _ = runc(&self.runc_root, &["delete", "--force", id]);
        }
        if let Some(shm) = &self.shm {
            let _ = crate::storage::unmount(shm);
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let _ = std::fs::remove_dir(c.path().join(self.cgroup_parent.trim_start_matches('/')));
            }
        }
    }
}

fn runc(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(RUNC).arg("--root").arg(root).args(args).stdin(Stdio::null()).output().expect("run runc")
}

fn write_bundle(dir: &Path, spec: &Spec) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(spec).unwrap()).unwrap();
}

/// A rootfs with the dynamic busybox (applets hard-linked), its libraries, and /etc/passwd + /etc/group.
fn busybox_rootfs(root: &Path) {
    for f in ["/bin/busybox", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libresolv.so.2", "/lib64/ld-linux-x86-64.so.2"] {
        let dst = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(f, &dst).unwrap();
    }
    for applet in ["sh", "id", "hostname", "cat", "grep", "readlink", "pwd"] {
        std::fs::hard_link(root.join("bin/busybox"), root.join("bin").join(applet)).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nwww:x:33:\nadm:x:4:www\n").unwrap();
}

#[test]
fn infra_and_container_specs_run_under_runc_root() {
    if !nix::unistd::geteuid().is_root() || !Path::new(RUNC).exists() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: needs root, {RUNC} and /bin/busybox");
        return;
    }
    let tag = &crate::util::new_id()[..12];
    let d = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        runc_root: d.path().join("runc"),
        ids: Vec::new(),
        netns: None,
        shm: None,
        cgroup_parent: format!("/berth-spectest-{tag}"),
    };
    let netns_name = format!("berth-spectest-{tag}");
    assert!(Command::new("ip").args(["netns", "add", &netns_name]).status().unwrap().success());
    cleanup.netns = Some(netns_name.clone());
    let netns = PathBuf::from(format!("/var/run/netns/{netns_name}"));
    let shm = d.path().join("shm");
    crate::storage::mount_tmpfs(&shm, "mode=1777,size=65536k").unwrap();
    cleanup.shm = Some(shm.clone());
    for (f, body) in [("hosts", "127.0.0.1 localhost\n"), ("resolv.conf", "nameserver 127.0.0.1\n"), ("hostname", "podhost\n")] {
        std::fs::write(d.path().join(f), body).unwrap();
    }
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: "p".into(), uid: "u".into(), namespace: "n".into(), attempt: 0 }),
        ..Default::default()
    };
    let (hosts, resolv, hostname_file) = (d.path().join("hosts"), d.path().join("resolv.conf"), d.path().join("hostname"));
    let mut sb = SandboxContext {
        sandbox_id: tag,
        config: &pod,
        netns_path: Some(&netns),
        namespaces: crate::spec::PodNamespaces::Infra(0),
        hostname: "podhost",
        hosts_file: &hosts,
        resolv_conf: &resolv,
        hostname_file: &hostname_file,
        shm_path: Some(&shm),
        cgroup_parent: &cleanup.cgroup_parent.clone(),
        userns: None,
    };

    // The infra process.
    let pause_root = d.path().join("pause");
    crate::pause::install(&pause_root).unwrap();
    let infra_id = format!("spectest-infra-{tag}");
    write_bundle(&d.path().join("infra"), &infra_spec(&sb, &pause_root, &infra_id).unwrap());
    let infra_bundle = d.path().join("infra");
    let out = Command::new(RUNC)
        .arg("--root")
        .arg(&cleanup.runc_root)
        .args(["run", "--detach", "--bundle"])
        .arg(&infra_bundle)
        .arg(&infra_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Not a pipe: the detached infra inherits runc's stdio and would hold a pipe open forever.
        .stderr(std::fs::File::create(d.path().join("infra.err")).unwrap())
        .status()
        .unwrap();
    cleanup.ids.push(infra_id.clone());
    let err = std::fs::read_to_string(d.path().join("infra.err")).unwrap_or_default();
    assert!(out.success(), "runc run infra: {err}");
    let state: serde_json::Value = serde_json::from_slice(&runc(&cleanup.runc_root, &["state", &infra_id]).stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    let infra_pid = state["pid"].as_i64().unwrap() as i32;
    sb.namespaces = crate::spec::PodNamespaces::Infra(infra_pid);

    // A container joining it, as user www from the image.
    let rootfs = d.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let script = "id; hostname; cat /proc/1/cmdline; echo; ulimit -n; cat /etc/resolv.conf; \
                  grep -c ' /dev/shm ' /proc/self/mountinfo; readlink /proc/self/ns/net; echo cwd=$(pwd); \
                  echo env=$GREETING";
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        envs: vec![cri::KeyValue { key: "GREETING".into(), value: "hi".into() }],
        ..Default::default()
    };
    let img = ImageRuntimeConfig { user: "www".into(), working_dir: "/tmp".into(), ..Default::default() };
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    let cid = format!("spectest-c-{tag}");
    let c = ContainerContext {
        container_id: &cid,
        config: &cfg,
        image: &img,
        rootfs: &rootfs,
        own_oom_score_adj: own_oom_score_adj(),
        pid_target: None,
        features: &Default::default(),
    };
    let spec = container_spec(&sb, &c).unwrap();
    write_bundle(&d.path().join("c"), &spec);
    cleanup.ids.push(cid.clone());
    let out = Command::new(RUNC)
        .arg("--root")
        .arg(&cleanup.runc_root)
        .args(["run", "--bundle"])
        .arg(d.path().join("c"))
        .arg(&cid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "runc run container: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("uid=33(www) gid=33(www) groups="), "{stdout}");
    assert!(lines[0].contains("4(adm)") && lines[0].contains("33(www)"), "{stdout}");
    assert_eq!(lines[1], "podhost", "{stdout}");
    assert!(lines[2].starts_with("/berth-pause"), "shares the infra's pid namespace: {stdout}");
    let own_nofile = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_nofile_hard(&s)).unwrap();
    assert_eq!(lines[3], DEFAULT_NOFILE.min(own_nofile).to_string(), "{stdout}");
    assert_eq!(lines[4], "nameserver 127.0.0.1", "{stdout}");
    assert_eq!(lines[5], "1", "{stdout}");
    let netns_ino = std::fs::metadata(&netns).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(lines[6], format!("net:[{netns_ino}]"), "{stdout}");
    assert_eq!(lines[7], "cwd=/tmp", "{stdout}");
    assert_eq!(lines[8], "env=hi", "{stdout}");
}
