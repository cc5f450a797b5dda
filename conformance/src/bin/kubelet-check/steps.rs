//! The checks of `kubelet-check`, in order; each prints `ok NAME` or `FAILED NAME: why`.

use crate::{wait_for, Env, NAMESPACE, NODE};
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::daemon::TargetKind;
use berth_conformance::proc;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The static pod's manifest name; kubelet calls the pod `<name>-<node>`.
const POD: &str = "ticker-web";
const START_LIMIT: Duration = Duration::from_secs(120);

fn pod_name() -> String {
    format!("{POD}-{NODE}")
}

/// Runs every check; returns (passed, failed).
pub async fn run_all(env: &mut Env) -> (u32, u32) {
    let (mut passed, mut failed) = (0, 0);
    let mut record = |name: &str, r: Result<()>| match r {
        Ok(()) => {
            passed += 1;
            println!("ok {name}");
        }
        Err(e) => {
            failed += 1;
            println!("FAILED {name}: {}", format!("{e:#}").replace('\n', " | "));
        }
    };
    let manifest = env.kubelet.manifests.join(format!("{POD}.yaml"));
    let first = match write_manifest(env, &manifest) {
        Ok(()) => pod_running(env).await,
        Err(e) => Err(e),
    };
    let first_sandbox = first.as_ref().ok().map(|p| p.sandbox.clone());
    record("static_pod_running_and_ready", first.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("{e:#}")));
    if let Ok(p) = &first {
        record("web_server_answers_on_pod_ip", web_answers(&p.ip).await);
        record("ticker_logs_through_cri", ticker_logs(env, &p.sandbox).await);
        record("killed_container_restarted", kill_and_restart(env, &p.sandbox).await);
    }
    record("foreign_sandbox_stopped_by_housekeeping", foreign_stopped(env).await);
    // Waits for kubelet's GC to remove the pod's containers: only then is the manifest put back,
    // since kubelet backs off restarting a container of the same pod UID that exited within the
    // last 10 s or more (the kill above) and logs CrashLoopBackOff, on any runtime.
    record("manifest_removed_pod_removed", manifest_removed(env, &manifest).await);
    let again = match write_manifest(env, &manifest) {
        Ok(()) => pod_running(env).await,
        Err(e) => Err(e),
    };
    record(
        "manifest_back_pod_runs_again",
        again.and_then(|p| match &first_sandbox {
            Some(old) if *old == p.sandbox => bail!("the pod runs in the old sandbox {old} again"),
            _ => Ok(()),
        }),
    );
    record("no_errors_in_logs", logs_clean(env));
    (passed, failed)
}

/// Writes the manifest whole: kubelet watches the directory with inotify and would read a
/// file still being written (and log that it cannot parse it).
fn write_manifest(env: &Env, manifest: &Path) -> Result<()> {
    let staged = env.tmp.join("manifest.staged");
    std::fs::write(&staged, manifest_text(&env.busybox))?;
    std::fs::rename(&staged, manifest).context("moving the manifest into staticPodPath")
}

/// The static pod: `ticker` prints a numbered line a second; `web` is busybox httpd serving
/// /etc with an HTTP readiness probe on /hostname.
fn manifest_text(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  namespace: {NAMESPACE}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: ticker
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"]
  - name: web
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    ports:
    - containerPort: 8080
    readinessProbe:
      httpGet:
        path: /hostname
        port: 8080
      periodSeconds: 2
"#
    )
}

/// Creates, over CRI and before kubelet starts, a pod kubelet knows nothing about.
pub async fn run_foreign_pod(c: &mut Clients, tmp: &Path) -> Result<String> {
    let logs = tmp.join("logs").join("foreign");
    std::fs::create_dir_all(&logs)?;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "not-kubelets".into(),
            uid: "foreign-uid".into(),
            namespace: "elsewhere".into(),
            attempt: 0,
        }),
        hostname: "foreign".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let r =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
            .await
            .context("RunPodSandbox of the foreign pod")?;
    Ok(r.into_inner().pod_sandbox_id)
}

struct Running {
    sandbox: String,
    ip: String,
}

fn container_status<'a>(pod: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    pod["status"]["containerStatuses"].as_array()?.iter().find(|c| c["name"] == name)
}

/// Waits until kubelet reports the pod Running with both containers running and ready, and
/// finds its ready sandbox over CRI.
async fn pod_running(env: &mut Env) -> Result<Running> {
    let name = pod_name();
    let pod = wait_for("kubelet reports the pod Running, both containers ready", START_LIMIT, || {
        let p = env.kubelet.pod(&name);
        async move {
            let Some(p) = p? else { return Ok(None) };
            let ready = ["ticker", "web"]
                .iter()
                .all(|c| container_status(&p, c).is_some_and(|s| s["ready"] == true && s["state"]["running"].is_object()));
            Ok((p["status"]["phase"] == "Running" && ready).then_some(p))
        }
    })
    .await?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_string();
    let sandbox =
        ready_sandbox(&mut env.cri).await?.with_context(|| format!("no ready sandbox labelled io.kubernetes.pod.name={name} over CRI"))?;
    let running =
        containers(&mut env.cri, &sandbox).await?.into_iter().filter(|c| c.state == cri::ContainerState::ContainerRunning as i32).count();
    if running != 2 {
        bail!("kubelet says Running, CRI lists {running} running containers in sandbox {sandbox}");
    }
    if ip.is_empty() {
        bail!("kubelet reports no podIP");
    }
    Ok(Running { sandbox, ip })
}

async fn ready_sandbox(c: &mut Clients) -> Result<Option<String>> {
    let labels = HashMap::from([("io.kubernetes.pod.name".to_string(), pod_name())]);
    let filter = cri::PodSandboxFilter {
        label_selector: labels,
        state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
        ..Default::default()
    };
    let items = c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner().items;
    Ok(items.first().map(|p| p.id.clone()))
}

async fn containers(c: &mut Clients, sandbox: &str) -> Result<Vec<cri::Container>> {
    let filter = cri::ContainerFilter { pod_sandbox_id: sandbox.into(), ..Default::default() };
    Ok(c.rt.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers)
}

async fn web_answers(ip: &str) -> Result<()> {
    let addr = format!("{ip}:8080");
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut s =
            std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(5)).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    })
    .await??;
    if !body.starts_with("HTTP/1.") || !body.contains(" 200 ") || !body.contains(POD) {
        bail!("GET /hostname on the pod IP: {:?}", &body[..body.len().min(300)]);
    }
    Ok(())
}

async fn container_named(c: &mut Clients, sandbox: &str, name: &str) -> Result<Vec<cri::Container>> {
    Ok(containers(c, sandbox).await?.into_iter().filter(|x| x.metadata.as_ref().is_some_and(|m| m.name == name)).collect())
}

async fn ticker_logs(env: &mut Env, sandbox: &str) -> Result<()> {
    let ticker = container_named(&mut env.cri, sandbox, "ticker").await?.into_iter().next().context("no ticker container over CRI")?;
    let st = env
        .cri
        .rt
        .container_status(cri::ContainerStatusRequest { container_id: ticker.id.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("empty ContainerStatus")?;
    let path = st.log_path.clone();
    wait_for("the ticker's CRI log has two lines", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move { Ok((text.lines().filter(|l| l.contains(" stdout F tick ")).count() >= 2).then_some(())) }
    })
    .await
    .with_context(|| format!("log file {path}"))
}

/// Kills the ticker's main process; kubelet must restart the container (restartCount one up)
/// and CRI must show the next attempt running and the killed one exited.
async fn kill_and_restart(env: &mut Env, sandbox: &str) -> Result<()> {
    let ticker = container_named(&mut env.cri, sandbox, "ticker")
        .await?
        .into_iter()
        .find(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .context("no running ticker container")?;
    let attempt = ticker.metadata.as_ref().map(|m| m.attempt).unwrap_or_default();
    let name = pod_name();
    let before = env
        .kubelet
        .pod(&name)?
        .and_then(|p| container_status(&p, "ticker").and_then(|s| s["restartCount"].as_u64()))
        .context("kubelet shows no ticker")?;
    // The pid from verbose ContainerStatus, as `crictl inspect` shows it (berth and containerd
    // both give `info["info"]` as JSON with `pid`).
    let st =
        env.cri.rt.container_status(cri::ContainerStatusRequest { container_id: ticker.id.clone(), verbose: true }).await?.into_inner();
    let info: serde_json::Value = serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}"))?;
    let pid = info["pid"].as_i64().filter(|p| *p > 1).with_context(|| format!("verbose ContainerStatus gives no pid: {info}"))?;
    proc::signal_pid(pid as i32, libc::SIGKILL);
    wait_for(&format!("kubelet reports ticker restartCount {} and running", before + 1), Duration::from_secs(90), || {
        let p = env.kubelet.pod(&name);
        async move {
            let Some(p) = p? else { return Ok(None) };
            Ok(container_status(&p, "ticker")
                .filter(|s| s["restartCount"].as_u64() == Some(before + 1) && s["state"]["running"].is_object())
                .map(|_| ()))
        }
    })
    .await?;
    let now = container_named(&mut env.cri, sandbox, "ticker").await?;
    let restarted = now
        .iter()
        .find(|c| c.metadata.as_ref().is_some_and(|m| m.attempt > attempt) && c.state == cri::ContainerState::ContainerRunning as i32)
        .with_context(|| format!("no running ticker with an attempt above {attempt} over CRI"))?;
    let old = now.iter().find(|c| c.id == ticker.id).context("the killed ticker is already gone from ListContainers")?;
    if old.state != cri::ContainerState::ContainerExited as i32 {
        bail!("the killed ticker is in state {}, expected EXITED", old.state);
    }
    eprintln!(
        "  killed attempt {attempt}, kubelet restartCount {before} -> {}, running attempt {}",
        before + 1,
        restarted.metadata.as_ref().map(|m| m.attempt).unwrap_or_default()
    );
    Ok(())
}

/// The foreign pod made before kubelet started is stopped (or removed) by kubelet.
async fn foreign_stopped(env: &mut Env) -> Result<()> {
    let id = env.foreign_pod.clone();
    let rt = env.cri.rt.clone();
    wait_for("kubelet stops the sandbox it did not create", Duration::from_secs(60), || {
        let mut rt = rt.clone();
        let id = id.clone();
        async move {
            match rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false }).await {
                Ok(r) => Ok(r.into_inner().status.filter(|s| s.state == cri::PodSandboxState::SandboxNotready as i32).map(|_| ())),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(Some(())),
                Err(s) => Err(s.into()),
            }
        }
    })
    .await
}

async fn manifest_removed(env: &mut Env, manifest: &Path) -> Result<()> {
    std::fs::remove_file(manifest).context("removing the manifest")?;
    let name = pod_name();
    wait_for("kubelet drops the pod", Duration::from_secs(60), || {
        let p = env.kubelet.pod(&name);
        async move { Ok(p?.is_none().then_some(())) }
    })
    .await?;
    let rt = env.cri.rt.clone();
    wait_for("no ready sandbox and no running container of the pod over CRI", Duration::from_secs(60), || {
        let mut c = Clients { rt: rt.clone(), img: env.cri.img.clone() };
        async move {
            if ready_sandbox(&mut c).await?.is_some() {
                return Ok(None);
            }
            let labels = HashMap::from([("io.kubernetes.pod.name".to_string(), pod_name())]);
            let filter = cri::ContainerFilter {
                label_selector: labels,
                state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                ..Default::default()
            };
            let running = c.rt.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers;
            Ok(running.is_empty().then_some(()))
        }
    })
    .await?;
    // kubelet's garbage collection (once a minute) then removes the sandbox and its exited
    // containers: the pod is gone from the runtime, not only stopped.
    wait_for("kubelet's GC removes the sandbox and its containers", Duration::from_secs(150), || {
        let mut c = Clients { rt: rt.clone(), img: env.cri.img.clone() };
        async move {
            let labels = HashMap::from([("io.kubernetes.pod.name".to_string(), pod_name())]);
            let pods =
                c.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(cri::PodSandboxFilter { label_selector: labels.clone(), ..Default::default() }),
                })
                .await?
                .into_inner()
                .items;
            let ctrs =
                c.rt.list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter { label_selector: labels, ..Default::default() }),
                })
                .await?
                .into_inner()
                .containers;
            Ok((pods.is_empty() && ctrs.is_empty()).then_some(()))
        }
    })
    .await
}

/// kubelet error lines this host causes, whatever the runtime (each seen with containerd too):
/// (what the line contains, why it is allowed).
const HOST_KUBELET_ERRORS: &[(&str, &str)] = &[
    ("Failed to set rlimit on max file handles", "this sandbox has no CAP_SYS_RESOURCE"),
    ("failed to find pid namespace of init process", "PID 1 of this VM is not an ordinary init"),
    ("PLEG is not healthy: pleg has yet to be successful", "kubelet logs it at every start, before its first relist"),
    (
        "RecentStats: unable to find data in memory cache",
        "cAdvisor asked for a new cgroup before its first housekeeping (google/cadvisor#2912, seen with containerd); timing, now and then",
    ),
];

/// Neither log has an error line (berth: no warning either), except kubelet's
/// [`HOST_KUBELET_ERRORS`], printed as notes.
fn logs_clean(env: &Env) -> Result<()> {
    let mut kubelet_errors = Vec::new();
    for l in env.kubelet.error_lines() {
        match HOST_KUBELET_ERRORS.iter().find(|(needle, _)| l.contains(needle)) {
            Some((_, why)) => eprintln!("note: allowed kubelet error ({why}): {l}"),
            None => kubelet_errors.push(l),
        }
    }
    let runtime_text = std::fs::read_to_string(&env.runtime_log).unwrap_or_default();
    let runtime_errors: Vec<&str> = match env.kind {
        // containerd 1.6 logs `level=warning msg="cleaning up after shim disconnected"` at every
        // container exit, so only its `level=error` lines count.
        TargetKind::Containerd => runtime_text.lines().filter(|l| l.contains("level=error")).collect(),
        _ => runtime_text.lines().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect(),
    };
    for l in &kubelet_errors {
        eprintln!("kubelet: {l}");
    }
    for l in &runtime_errors {
        eprintln!("runtime: {l}");
    }
    if !kubelet_errors.is_empty() || !runtime_errors.is_empty() {
        bail!("{} error lines in kubelet's log, {} in the runtime's (printed above)", kubelet_errors.len(), runtime_errors.len());
    }
    Ok(())
}
