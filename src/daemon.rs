//! The daemon's shared context (the lifecycle error type is in [`crate::error`]).
//!
//! [`Daemon`] is built once by `berth serve` and handed (in an `Arc`) to the gRPC adapters in
//! `server/`; `sandbox` and `container` functions take it as their first argument. It owns the
//! configuration, the metadata store, the image store, the CNI client, the OCI runtime handlers,
//! the in-memory name reservations and the per-object locks.

use crate::config::Config;
use crate::image::ImageStore;
use crate::network::Cni;
use crate::oci::Runtime;
use crate::state::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Everything the lifecycle modules share. Built by [`Daemon::open`].
pub struct Daemon {
    /// Effective configuration.
    pub config: Config,
    /// Metadata store (`<root>/state.redb`).
    pub store: Arc<Store>,
    /// Image store (`<root>/images`).
    pub images: Arc<ImageStore>,
    /// The pod sandbox and container records, the folding of exits into them and their event
    /// bus (CRI GetContainerEvents); every record and event goes through it.
    pub records: crate::records::Records,
    /// CNI client for the pod network.
    pub cni: Cni,
    /// The OCI runtime handlers and their self-test results.
    pub handlers: Arc<crate::handlers::Handlers>,
    /// The `berth-monitor` binary.
    pub monitor_bin: PathBuf,
    /// The static `berth-pause` binary, installed under the run root.
    pub pause_bin: PathBuf,
    /// Reserved names (pod sandbox and container name keys) -> object ID.
    names: Mutex<HashMap<String, String>>,
    /// Pod sandboxes whose RunPodSandbox is under way: not listed until it returns.
    creating: Mutex<std::collections::HashSet<String>>,
    /// Per-object operation locks, so two RPCs on one object never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// SIGKILL deadlines of graceful container stops in progress (a shorter stop preempts).
    pub stop_deadlines: crate::stopdeadline::StopDeadlines,
    /// This process's own oom_score_adj: the lowest value its children may be given.
    pub own_oom_score_adj: i32,
    /// What this host lets containers have (capabilities, nofile limit, cgroup layout), probed
    /// once at start rather than on every CreateContainer.
    pub host_facts: crate::spec::HostFacts,
    /// systemd over D-Bus, under `cgroup_manager = "systemd"` (monitor scopes); `None` under
    /// cgroupfs. Set by the binary after [`Daemon::open`] ([`Daemon::connect_systemd`]).
    pub systemd: Option<crate::cgroups::systemd::SystemdClient>,
    /// The NRI plugins, when `[nri] enable` ([`crate::nri`]).
    pub nri: Option<Arc<crate::nri::Nri>>,
}

impl Daemon {
    /// Opens the store and the image store, resolves runtime handlers, installs the pause binary
    /// and rebuilds name reservations. Call `sandbox::recover` and `container::recover`
    /// afterwards to reconcile with the runtime.
    pub fn open(config: Config, images: Arc<ImageStore>, store: Arc<Store>) -> anyhow::Result<Daemon> {
        use anyhow::Context;
        for dir in [&config.root, &config.run_root] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // 0711: other host users may not list or read berth's trees. Through a pod's idmapped
            // mounts, host-root files show as owned by the pod's host ids, which may belong to
            // someone on the host (e.g. subordinate ids); they must not reach them from here.
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .with_context(|| format!("chmod 0711 {}", dir.display()))?;
        }
        let monitor_bin =
            if config.monitor_path.as_os_str().is_empty() { sibling_binary("berth-monitor")? } else { config.monitor_path.clone() };
        if !monitor_bin.exists() {
            anyhow::bail!("monitor binary {} does not exist (set monitor_path)", monitor_bin.display());
        }
        let pause_bin = crate::pause::install(&config.run_root)
            .with_context(|| format!("installing berth-pause under {}", config.run_root.display()))?;
        let handlers = Arc::new(crate::handlers::Handlers::open(&config, &pause_bin)?);
        match crate::apparmor::ensure_default_loaded(&config.run_root) {
            Ok(crate::apparmor::Loaded::LoadedNow) => tracing::info!("AppArmor profile berth-default loaded"),
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(error = %why, "cannot load the AppArmor profile berth-default; pods asking for RuntimeDefault will be refused")
            }
        }
        let own_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let cni = Cni::new(config.network.clone());
        let records = crate::records::Records::open(store.clone(), &config).context("loading the pod sandbox and container records")?;
        let config_nri = config.nri.clone();
        Ok(Daemon {
            config,
            records,
            store,
            images,
            cni,
            handlers,
            monitor_bin,
            pause_bin,
            names: Mutex::new(HashMap::new()),
            creating: Mutex::new(Default::default()),
            locks: Mutex::new(HashMap::new()),
            stop_deadlines: Default::default(),
            own_oom_score_adj,
            host_facts: crate::spec::HostFacts::probe(),
            systemd: None,
            nri: config_nri.enable.then(|| Arc::new(crate::nri::Nri::new(&config_nri))),
        })
    }

    /// Under `cgroup_manager = "systemd"`, connects to systemd on the system bus; a no-op under
    /// cgroupfs. Errors: no system bus (the message says what the driver needs).
    pub async fn connect_systemd(&mut self) -> std::result::Result<(), crate::cgroups::systemd::SystemdError> {
        if self.config.cgroup_driver() == crate::cgroups::Driver::Systemd {
            let client = crate::cgroups::systemd::SystemdClient::connect().await?;
            let version = client.version().await?;
            tracing::info!(systemd = %version, "cgroup driver systemd: connected to systemd");
            self.systemd = Some(client);
        }
        Ok(())
    }

    /// The runtime for a CRI `runtime_handler` ([`crate::handlers::Handlers::runtime`]).
    pub fn runtime(&self, handler: &str) -> Result<&Runtime> {
        self.handlers.runtime(handler)
    }

    /// Reserves `key` for `id`. Errors with AlreadyExists naming the holder when taken by another.
    pub fn reserve_name(&self, kind: &'static str, key: &str, id: &str) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        match names.get(key) {
            Some(holder) if holder != id => Err(Error::AlreadyExists { kind, name: key.to_string(), id: holder.clone() }),
            _ => {
                names.insert(key.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Releases `key` if `id` holds it. Idempotent.
    pub fn release_name(&self, key: &str, id: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(key).is_some_and(|h| h == id) {
            names.remove(key);
        }
    }

    /// The lock serializing operations on one object (pod sandbox or container ID).
    pub fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Marks pod sandbox `id` as being created until the guard is dropped: ListPodSandbox
    /// does not show it meanwhile (as containerd), so NRI plugins and clients never see a pod
    /// whose RunPodSandbox may still fail.
    pub fn creating(&self, id: &str) -> CreatingGuard<'_> {
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string());
        CreatingGuard { d: self, id: id.to_string() }
    }

    /// Drops from `pods` those whose RunPodSandbox is under way and has not stored them Ready
    /// yet ([`Daemon::creating`]); one look at the set for the whole list.
    pub fn retain_created(&self, pods: &mut Vec<crate::records::SandboxRecord>) {
        let creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if !creating.is_empty() {
            pods.retain(|r| r.state == crate::records::SandboxState::Ready || !creating.contains(&r.id));
        }
    }

    /// The NRI host and the NRI view of pod sandbox `sandbox_id`, when NRI is on and the pod
    /// is stored: what a container's NRI event needs.
    pub fn nri_pod(&self, sandbox_id: &str) -> Option<(&crate::nri::Nri, crate::nri::api::PodSandbox)> {
        let nri = self.nri.as_deref()?;
        let pod = self.records.stored_sandbox(sandbox_id)?;
        Some((nri, crate::records::nri_pod(&pod)))
    }

    /// Sends NRI's StopContainer for container `r`, which has just been seen to end (the stop
    /// path and the exit path both come here, each once per container).
    pub async fn nri_container_stopped(&self, r: &crate::records::ContainerRecord) {
        if let Some((nri, pod)) = self.nri_pod(&r.sandbox_id) {
            nri.stop_container(&pod, &crate::records::nri_container(r)).await;
        }
    }

    /// [`crate::nri::Nri::block_sync`] when NRI is on: held from storing an object's new state
    /// until its NRI event is sent, so a plugin being synchronized sees one or the other.
    /// Never held across another call that takes it (the lock is fair: a waiting Synchronize
    /// would deadlock a nested read).
    pub async fn nri_block_sync(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        match &self.nri {
            Some(n) => Some(n.block_sync().await),
            None => None,
        }
    }

    /// Forgets the lock of a removed object.
    pub fn drop_lock(&self, id: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    /// How many objects have a lock entry (a removed object's entry must go with it).
    #[cfg(test)]
    pub(crate) fn lock_count(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Ends a pod sandbox's "being created" mark ([`Daemon::creating`]) when dropped.
pub struct CreatingGuard<'a> {
    d: &'a Daemon,
    id: String,
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        self.d.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// Per-object paths (`ContainerPaths::new(d, id)`) come from the configured roots.
impl crate::records::Roots for Daemon {
    fn run_root(&self) -> &Path {
        &self.config.run_root
    }
    fn root(&self) -> &Path {
        &self.config.root
    }
}

/// A binary installed beside the running executable (`target/debug/berth` ->
/// `target/debug/berth-monitor`, `/usr/local/bin/berth` -> `/usr/local/bin/berth-monitor`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(dir.join(name))
}
