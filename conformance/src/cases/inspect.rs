//! berth's inspect endpoint through its CLI: `berth status [container|pod] ID` (berth only).

use super::util::check;
use crate::ctx::{skip, Ctx};
use crate::daemon::{berth_binary, TargetKind};
use anyhow::{Context, Result};
use std::path::Path;

/// Runs `berth status --config <tmp>/berth.toml ARGS`; returns (exit success, stdout, stderr).
fn berth_status(ctx: &Ctx, args: &[&str]) -> Result<(bool, String, String)> {
    let bin = berth_binary();
    let out = std::process::Command::new(&bin)
        .arg("status")
        .arg("--config")
        .arg(ctx.tmp.join("berth.toml"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} status {args:?}", bin.display()))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn json(ctx: &Ctx, args: &[&str]) -> Result<serde_json::Value> {
    let (ok, out, err) = berth_status(ctx, args)?;
    check(ok, || format!("berth status {args:?} failed: {err}"))?;
    serde_json::from_str(&out).with_context(|| format!("berth status {args:?}: not JSON: {out:.200}"))
}

/// A running `sleep` container: `berth status container <id prefix>` gives its init pid (a live
/// `sleep` process), a live `berth-monitor` pid, the bundle (holding config.json), the log path
/// and cgroups path; `berth status pod <id>` lists the container and the pinned netns; an unknown
/// ID fails with a message naming it.
pub async fn status_shows_container_and_pod(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("the inspect endpoint and `berth status` are berth's");
    }
    let pod = ctx.run_pod("inspect").await?;
    let res = async {
        let id = ctx.start_container(&pod, "inspect", &ctx.images.busybox, &["sleep", "1000"]).await?;
        ctx.wait_container_state(&id, berth::cri::v1::ContainerState::ContainerRunning, std::time::Duration::from_secs(30)).await?;
        let v = json(ctx, &["container", &id[..12]])?;
        check(v["record"]["id"] == id.as_str(), || format!("record.id {}, expected {id}", v["record"]["id"]))?;
        let pid = v["pids"]["init"].as_i64().unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        check(pid > 0 && cmdline.starts_with(b"sleep\0"), || {
            format!("pids.init {pid}: /proc cmdline {:?}, expected sleep", String::from_utf8_lossy(&cmdline))
        })?;
        let mon = v["pids"]["monitor"].as_i64().unwrap_or(0);
        let comm = std::fs::read_to_string(format!("/proc/{mon}/comm")).unwrap_or_default();
        check(mon > 0 && comm.trim() == "berth-monitor" && v["pids"]["monitor_alive"] == true, || {
            format!("pids.monitor {mon}: comm {comm:?}, monitor_alive {}", v["pids"]["monitor_alive"])
        })?;
        let bundle = v["bundle"].as_str().unwrap_or("");
        check(Path::new(bundle).join("config.json").is_file(), || format!("bundle {bundle:?} holds no config.json"))?;
        check(bundle.contains(&id), || format!("bundle {bundle:?} does not name the container"))?;
        let log = v["log_path"].as_str().unwrap_or("");
        check(log.starts_with(&pod.config.log_directory) && Path::new(log).exists(), || format!("log_path {log:?}"))?;
        let cg = v["cgroups_path"].as_str().unwrap_or("");
        let rel = crate::cgroups::dir_of(cg);
        let is_cgroup = Path::new("/sys/fs/cgroup/memory").join(&rel).is_dir() || Path::new("/sys/fs/cgroup").join(&rel).is_dir();
        check(cg.ends_with(&id) && is_cgroup, || format!("cgroups_path {cg:?} is not a cgroup (looked for {rel})"))?;

        let p = json(ctx, &["pod", &pod.id])?;
        let listed = p["containers"].as_array().is_some_and(|a| a.iter().any(|c| c == id.as_str()));
        check(listed, || format!("pod view containers {}, expected {id} among them", p["containers"]))?;
        let netns = p["netns_path"].as_str().unwrap_or("");
        check(Path::new(netns).exists(), || format!("pod netns_path {netns:?} does not exist"))?;
        // kubelet's default pod (PID CONTAINER) has no infra process: its IPC and UTS namespaces
        // are pinned files (issue #15).
        let infra = p["pids"]["init"].as_i64().unwrap_or(0);
        let pinned = &p["record"]["pinned"];
        let files: Vec<&str> = ["ipc", "uts"].iter().filter_map(|k| pinned[*k].as_str()).collect();
        check(infra == 0 && files.len() == 2 && files.iter().all(|f| Path::new(f).exists()) && p["cgroups_path"].is_null(), || {
            format!(
                "pod without an infra process: pids.init {infra}, pinned {pinned}, cgroups_path {}: expected 0, two existing files, null",
                p["cgroups_path"]
            )
        })?;
        // Without a kind, the ID is looked for among containers, then pods.
        let v2 = json(ctx, &[&pod.id])?;
        check(v2["record"]["id"] == pod.id.as_str(), || format!("`berth status <pod id>` answered {}", v2["record"]["id"]))?;

        let (ok, _, err) = berth_status(ctx, &["container", "0000deadbeef"])?;
        check(!ok && err.contains("0000deadbeef") && err.contains("404"), || format!("unknown id: success {ok}, stderr {err:?}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// The inspect socket (HTTP/1.1) answers whatever `Host` a client sends on a unix socket: the
/// socket path, an empty one, none (HTTP/1.0), `localhost` (issue #16: as on the CRI socket).
pub async fn any_host_header(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("the inspect endpoint is berth's");
    }
    use std::io::{Read, Write};
    let socket = ctx.tmp.join("run").join("inspect.sock");
    let shown = socket.display().to_string();
    let requests = [
        format!("GET /pods/no-such-pod HTTP/1.1\r\nHost: {shown}\r\nConnection: close\r\n\r\n"),
        "GET /pods/no-such-pod HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n".to_string(),
        "GET /pods/no-such-pod HTTP/1.0\r\n\r\n".to_string(),
        "GET /pods/no-such-pod HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
    ];
    for req in requests {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).with_context(|| format!("connect {shown}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let answer = berth::inspect::parse_response(&raw);
        check(matches!(&answer, Some((404, body)) if body.contains("no-such-pod")), || {
            format!("{req:?}: expected 404 naming the pod, got {:?}", String::from_utf8_lossy(&raw[..raw.len().min(300)]))
        })?;
    }
    Ok(())
}
