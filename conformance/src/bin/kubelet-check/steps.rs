//! The checks of `kubelet-check`, in order; each prints `ok NAME` or `FAILED NAME: why`.

use crate::{wait_for, Env, NAMESPACE, NODE};
use anyhow::{bail, Context, Result};
use berth_conformance::client::Clients;
use berth_conformance::proc;
use k8s_cri::v1 as cri;
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
    let written = std::fs::write(&manifest, manifest_text(&env.busybox)).context("writing the manifest");
    let first = match written {
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
    record("manifest_removed_pod_stops", manifest_removed(env, &manifest).await);
    let again = match std::fs::write(&manifest, manifest_text(&env.busybox)) {
        Ok(()) => pod_running(env).await,
        Err(e) => Err(e.into()),
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
        metadata: Some(cri::PodSandboxMetadata { name: "not-kubelets".into(), uid: "foreign-uid".into(), namespace: "elsewhere".into(), attempt: 0 }),
        hostname: "foreign".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let r = c.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await.context("RunPodSandbox of the foreign pod")?;
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
            let ready = ["ticker", "web"].iter().all(|c| container_status(&p, c).is_some_and(|s| s["ready"] == true && s["state"]["running"].is_object()));
            Ok((p["status"]["phase"] == "Running" && ready).then_some(p))
        }
    })
    .await?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_string();
    let sandbox = ready_sandbox(&mut env.cri).await?.with_context(|| format!("no ready sandbox labelled io.kubernetes.pod.name={name} over CRI"))?;
    let running = containers(&mut env.cri, &sandbox).await?.into_iter().filter(|c| c.state == cri::ContainerState::ContainerRunning as i32).count();
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
    let filter = cri::PodSandboxFilter { label_selector: labels, state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }), ..Default::default() };
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
        let mut s = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(5)).with_context(|| format!("connect {addr}"))?;
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
    let st = env.cri.rt.container_status(cri::ContainerStatusRequest { container_id: ticker.id.clone(), verbose: false }).await?.into_inner().status.context("empty ContainerStatus")?;
    let path = st.log_path.clone();
    wait_for("the ticker's CRI log has two lines", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move { Ok((text.lines().filter(|l| l.contains(" stdout F tick ")).count() >= 2).then_some(())) }
    })
    .await
    .with_context(|| format!("log file {path}"))
}

/// Kills the ticker's main process; kubelet must restart the container (restartCount 1) and
/// CRI must show attempt 1 running.
async fn kill_and_restart(env: &mut Env, sandbox: &str) -> Result<()> {
    let ticker = container_named(&mut env.cri, sandbox, "ticker").await?.into_iter().next().context("no ticker container")?;
    let (code, body) = berth::inspect::query(&env.inspect_socket, &format!("/containers/{}", ticker.id))?;
    if code != 200 {
        bail!("inspect /containers/{}: {code} {body}", ticker.id);
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let pid = v["pids"]["init"].as_i64().context("inspect gives no init pid")?;
    proc::signal_pid(pid as i32, libc::SIGKILL);
    let name = pod_name();
    wait_for("kubelet reports ticker restartCount 1 and running", Duration::from_secs(90), || {
        let p = env.kubelet.pod(&name);
        async move {
            let Some(p) = p? else { return Ok(None) };
            Ok(container_status(&p, "ticker").filter(|s| s["restartCount"] == 1 && s["state"]["running"].is_object()).map(|_| ()))
        }
    })
    .await?;
    let now = container_named(&mut env.cri, sandbox, "ticker").await?;
    let restarted = now.iter().find(|c| c.metadata.as_ref().is_some_and(|m| m.attempt == 1)).context("no ticker with attempt 1 over CRI")?;
    if restarted.state != cri::ContainerState::ContainerRunning as i32 {
        bail!("ticker attempt 1 is in state {}", restarted.state);
    }
    let old = now.iter().find(|c| c.id == ticker.id).context("the killed ticker is already gone from ListContainers")?;
    if old.state != cri::ContainerState::ContainerExited as i32 {
        bail!("the killed ticker is in state {}, expected EXITED", old.state);
    }
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
    .await
}

/// Neither log has an error line.
fn logs_clean(env: &Env) -> Result<()> {
    let kubelet_errors = env.kubelet.error_lines();
    let berth_text = std::fs::read_to_string(&env.berth_log).unwrap_or_default();
    let berth_errors: Vec<&str> = berth_text.lines().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect();
    for l in &kubelet_errors {
        eprintln!("kubelet: {l}");
    }
    for l in &berth_errors {
        eprintln!("berth: {l}");
    }
    if !kubelet_errors.is_empty() || !berth_errors.is_empty() {
        bail!("{} error lines in kubelet's log, {} in berth's (printed above)", kubelet_errors.len(), berth_errors.len());
    }
    let _ = &env.tmp;
    Ok(())
}
