//! The context every case gets: CRI clients, the test images, the target kind, and helpers that
//! build configs and drive common sequences (run a pod, create+start a container, wait for exit).

use crate::client::Clients;
use crate::daemon::{Daemon, TargetKind};
use crate::images::TestImages;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Label put on every pod and container the suite creates (teardown removes what carries it).
pub const SUITE_LABEL: &str = "berth-conformance";

/// A case asks to be skipped by returning this error (`Err(Skipped("why").into())`).
#[derive(Debug, thiserror::Error)]
#[error("skipped: {0}")]
pub struct Skipped(pub String);

/// Shorthand for a skip.
pub fn skip<T>(why: &str) -> Result<T> {
    Err(Skipped(why.to_string()).into())
}

/// Everything a case may use.
pub struct Ctx {
    /// What implementation is under test.
    pub kind: TargetKind,
    /// The pushed test images.
    pub images: TestImages,
    /// The suite's temp dir (logs live under `<tmp>/logs`).
    pub tmp: PathBuf,
    /// Names in /var/run/netns before the daemon started.
    pub netns_before: BTreeSet<String>,
    pub(crate) clients: Mutex<Clients>,
    pub(crate) daemon: tokio::sync::Mutex<Daemon>,
    created: Mutex<Vec<String>>,
    seq: AtomicU32,
}

/// A running pod created by [`Ctx::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pod sandbox id.
    pub id: String,
    /// The config it was created with (needed for CreateContainer).
    pub config: cri::PodSandboxConfig,
}

impl Ctx {
    pub(crate) fn new(
        kind: TargetKind,
        images: TestImages,
        tmp: PathBuf,
        netns_before: BTreeSet<String>,
        clients: Clients,
        daemon: Daemon,
    ) -> Ctx {
        Ctx {
            kind,
            images,
            tmp,
            netns_before,
            clients: Mutex::new(clients),
            daemon: tokio::sync::Mutex::new(daemon),
            created: Mutex::new(Vec::new()),
            seq: AtomicU32::new(0),
        }
    }

    /// A RuntimeService client (cheap clone of the shared channel).
    pub fn rt(&self) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        self.clients.lock().map(|c| c.rt.clone()).unwrap_or_else(|p| p.into_inner().rt.clone())
    }

    /// An ImageService client.
    pub fn img(&self) -> cri::image_service_client::ImageServiceClient<tonic::transport::Channel> {
        self.clients.lock().map(|c| c.img.clone()).unwrap_or_else(|p| p.into_inner().img.clone())
    }

    /// True only when the harness started the daemon and may restart it.
    pub fn can_restart(&self) -> bool {
        self.kind != TargetKind::External
    }

    /// True when the harness configured `registry.k8s.io` to be served by the local registry.
    pub fn has_k8s_mirror(&self) -> bool {
        self.kind != TargetKind::External
    }

    /// SIGTERM the daemon by PID, wait, start it again on the same root; reconnects the clients.
    pub async fn restart_daemon(&self) -> Result<()> {
        let mut d = self.daemon.lock().await;
        let c = d.restart().await?;
        if let Ok(mut g) = self.clients.lock() {
            *g = c;
        }
        Ok(())
    }

    /// Restarts the daemon with `env` added to its environment (empty: back to none).
    pub async fn restart_daemon_with_env(&self, env: Vec<(String, String)>) -> Result<()> {
        let mut d = self.daemon.lock().await;
        d.env = env;
        let c = d.restart().await?;
        if let Ok(mut g) = self.clients.lock() {
            *g = c;
        }
        Ok(())
    }

    /// Stops the daemon (for restart cases that need downtime); [`Ctx::start_daemon`] brings it back.
    pub async fn stop_daemon(&self) -> Result<()> {
        if !self.can_restart() {
            bail!("cannot stop an external endpoint");
        }
        self.daemon.lock().await.stop();
        Ok(())
    }

    /// Kills the daemon with SIGKILL (a crash); [`Ctx::start_daemon`] brings it back.
    pub async fn kill_daemon(&self) -> Result<()> {
        if !self.can_restart() {
            bail!("cannot kill an external endpoint");
        }
        self.daemon.lock().await.kill();
        Ok(())
    }

    /// Starts the daemon again after [`Ctx::stop_daemon`] and reconnects.
    pub async fn start_daemon(&self) -> Result<()> {
        let c = self.daemon.lock().await.start().await?;
        if let Ok(mut g) = self.clients.lock() {
            *g = c;
        }
        Ok(())
    }

    /// The CRI unix socket under test.
    pub async fn socket(&self) -> PathBuf {
        self.daemon.lock().await.socket.clone()
    }

    /// Starts the daemon again after [`Ctx::stop_daemon`] with another binary (same config and
    /// roots) and reconnects; returns the binary it replaced.
    pub async fn start_daemon_with(&self, program: PathBuf) -> Result<PathBuf> {
        let mut d = self.daemon.lock().await;
        let previous = d.set_program(program);
        let c = d.start().await?;
        if let Ok(mut g) = self.clients.lock() {
            *g = c;
        }
        Ok(previous)
    }

    /// PID of the daemon the harness started.
    pub async fn daemon_pid(&self) -> Option<u32> {
        self.daemon.lock().await.pid()
    }

    /// The last `n` lines of the daemon's log.
    pub async fn daemon_log_tail(&self, n: usize) -> String {
        self.daemon.lock().await.log_tail(n)
    }

    /// Ids of every pod and container the suite created.
    pub fn created_ids(&self) -> Vec<String> {
        self.created.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Notes a pod or container the suite made some other way than through these helpers, so
    /// the leak check knows it.
    pub(crate) fn record(&self, id: &str) {
        if let Ok(mut v) = self.created.lock() {
            v.push(id.to_string());
        }
    }

    /// A unique short suffix for names.
    pub fn unique(&self) -> String {
        format!("{}-{}", std::process::id(), self.seq.fetch_add(1, Ordering::SeqCst))
    }

    /// A pod config named `name-<unique>` in namespace `berth-conformance`, with its own
    /// log_directory under `<tmp>/logs`, the suite label and the extra `labels`, and the
    /// namespace options kubelet sends for a pod without `shareProcessNamespace`, hostNetwork,
    /// hostPID or hostIPC: network and IPC POD, PID CONTAINER (berth runs such a pod without
    /// an infra process). [`Ctx::shared_pid_pod_config`] is the pod of one PID namespace.
    pub fn pod_config(&self, name: &str, labels: &[(&str, &str)]) -> cri::PodSandboxConfig {
        let u = self.unique();
        let full = format!("{name}-{u}");
        let mut l: HashMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.insert(SUITE_LABEL.into(), "1".into());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: full.clone(),
                uid: format!("uid-{u}"),
                namespace: "berth-conformance".into(),
                attempt: 0,
            }),
            hostname: name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect(),
            log_directory: self.tmp.join("logs").join(&full).display().to_string(),
            labels: l,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespace_options(false)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// [`Ctx::pod_config`] of a pod whose containers share one PID namespace (kubelet's
    /// `shareProcessNamespace: true`: PID mode POD), which berth gives an infra process.
    pub fn shared_pid_pod_config(&self, name: &str, labels: &[(&str, &str)]) -> cri::PodSandboxConfig {
        let mut pc = self.pod_config(name, labels);
        pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
            Some(kubelet_namespace_options(true));
        pc
    }

    /// RunPodSandbox with `config`.
    pub async fn run_pod_with(&self, config: cri::PodSandboxConfig) -> Result<Pod> {
        std::fs::create_dir_all(&config.log_directory).ok();
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let r = self
            .rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner();
        if r.pod_sandbox_id.is_empty() {
            bail!("RunPodSandbox {name}: empty pod_sandbox_id");
        }
        self.record(&r.pod_sandbox_id);
        Ok(Pod { id: r.pod_sandbox_id, config })
    }

    /// RunPodSandbox with [`Ctx::pod_config`].
    pub async fn run_pod(&self, name: &str) -> Result<Pod> {
        self.run_pod_with(self.pod_config(name, &[])).await
    }

    /// StopPodSandbox + RemovePodSandbox, errors reported.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        self.rt()
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        self.rt()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// Pulls `image` unless ImageStatus already knows it; returns the image ref the runtime gave.
    pub async fn ensure_image(&self, image: &str) -> Result<String> {
        let st = self
            .img()
            .image_status(cri::ImageStatusRequest { image: Some(spec(image)), verbose: false })
            .await
            .with_context(|| format!("ImageStatus {image}"))?
            .into_inner();
        if let Some(i) = st.image {
            return Ok(i.id);
        }
        self.pull(image).await
    }

    /// PullImage `image`; returns `image_ref`.
    pub async fn pull(&self, image: &str) -> Result<String> {
        let r = self
            .img()
            .pull_image(cri::PullImageRequest { image: Some(spec(image)), auth: None, sandbox_config: None })
            .await
            .with_context(|| format!("PullImage {image}"))?
            .into_inner();
        Ok(r.image_ref)
    }

    /// A container config named `name` running `cmd` (as `command`) from `image`, logging to
    /// `<name>.log` in the pod's log_directory, with the suite label.
    pub fn container_config(&self, name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
        let mut labels = HashMap::new();
        labels.insert(SUITE_LABEL.to_string(), "1".to_string());
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(spec(image)),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels,
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// CreateContainer in `pod` with `config` (pulls the image first when needed).
    pub async fn create_with(&self, pod: &Pod, config: cri::ContainerConfig) -> Result<String> {
        if let Some(i) = &config.image {
            self.ensure_image(&i.image).await?;
        }
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let r = self.create_request(pod, config).await.with_context(|| format!("CreateContainer {name} in pod {}", pod.id))?.into_inner();
        if r.container_id.is_empty() {
            bail!("CreateContainer {name}: empty container_id");
        }
        self.record(&r.container_id);
        Ok(r.container_id)
    }

    /// The bare CreateContainer RPC of `config` in `pod` (pod config as stored at RunPodSandbox),
    /// its answer as the target gave it: for cases that expect a refusal. Nothing is recorded
    /// for cleanup; [`Ctx::create_with`] is the one for containers that should exist.
    pub async fn create_request(
        &self,
        pod: &Pod,
        config: cri::ContainerConfig,
    ) -> std::result::Result<tonic::Response<cri::CreateContainerResponse>, tonic::Status> {
        self.rt()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
    }

    /// CreateContainer + StartContainer of `cmd` from `image`; returns the container id.
    pub async fn start_container(&self, pod: &Pod, name: &str, image: &str, cmd: &[&str]) -> Result<String> {
        let id = self.create_with(pod, self.container_config(name, image, cmd)).await?;
        self.rt()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .with_context(|| format!("StartContainer {name} ({id})"))?;
        Ok(id)
    }

    /// ContainerStatus of `id`.
    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        self.rt()
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .with_context(|| format!("ContainerStatus {id}: no status in the reply"))
    }

    /// Polls ContainerStatus until the state is `state` (a `cri::ContainerState`), `limit` max.
    pub async fn wait_container_state(&self, id: &str, state: cri::ContainerState, limit: Duration) -> Result<cri::ContainerStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.container_status(id).await?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("container {id}: state {} after {limit:?}, expected {}", state_name(st.state), state.as_str_name());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// ExecSync `cmd` in `id` with `timeout` seconds (0 = none).
    pub async fn exec(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse> {
        Ok(self
            .rt()
            .exec_sync(cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout })
            .await
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
            .into_inner())
    }

    /// Stops and removes every pod carrying the suite label (best effort; returns what failed).
    pub async fn remove_suite_pods(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut sel = HashMap::new();
        sel.insert(SUITE_LABEL.to_string(), "1".to_string());
        let filter = cri::PodSandboxFilter { label_selector: sel, ..Default::default() };
        match self.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }).await {
            Ok(r) => {
                for p in r.into_inner().items {
                    if let Err(e) = self.remove_pod(&p.id).await {
                        errs.push(format!("{e:#}"));
                    }
                }
            }
            Err(e) => errs.push(format!("ListPodSandbox: {e}")),
        }
        errs
    }
}

/// An ImageSpec for `image`.
pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

/// The proto name of a ContainerState value, e.g. `CONTAINER_EXITED`.
pub fn state_name(v: i32) -> &'static str {
    cri::ContainerState::try_from(v).map(|s| s.as_str_name()).unwrap_or("UNKNOWN_VALUE")
}

/// The namespace options kubelet sends (its `namespacesForPod`) for a pod with its own network
/// and IPC namespaces: PID POD when `share_pid` (`shareProcessNamespace: true`), else CONTAINER.
pub fn kubelet_namespace_options(share_pid: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: if share_pid { cri::NamespaceMode::Pod } else { cri::NamespaceMode::Container } as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
