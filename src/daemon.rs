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

/// Counts one running self-test for as long as it lives (also when the test panics).
struct SelfTestRunning(Arc<std::sync::atomic::AtomicUsize>);

impl SelfTestRunning {
    fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> SelfTestRunning {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SelfTestRunning(counter.clone())
    }
}

impl Drop for SelfTestRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Everything the lifecycle modules share. Built by [`Daemon::open`].
pub struct Daemon {
    /// Effective configuration.
    pub config: Config,
    /// Metadata store (`<root>/state.redb`).
    pub store: Arc<Store>,
    /// Image store (`<root>/images`).
    pub images: Arc<ImageStore>,
    /// The container records (`containers` table) with their in-memory copy; every container
    /// record goes through it.
    pub containers: crate::container::table::ContainerTable,
    /// CNI client for the pod network.
    pub cni: Cni,
    /// OCI runtimes by handler name.
    pub runtimes: HashMap<String, Runtime>,
    /// Configured runtime handlers that cannot run here, with the reason (reported in Status
    /// verbose info and in the error of a request naming them, never silently dropped).
    pub unavailable_runtimes: HashMap<String, String>,
    /// What each handler's self-test found (`sandbox::selftest`), by handler name: run at
    /// start, and again (at most once a minute) for a handler that failed, so a transient
    /// failure does not stick.
    handler_health: Mutex<HashMap<String, crate::sandbox::selftest::Health>>,
    /// Set while a re-test runs, so Status calls do not pile them up.
    retesting: std::sync::atomic::AtomicBool,
    /// Self-tests running now (the one at start, re-tests): a shutdown waits for them, since a
    /// daemon that exits mid-test leaves the test's `runtime create` and its cgroup behind.
    selftests_running: Arc<std::sync::atomic::AtomicUsize>,
    /// The `berth-monitor` binary.
    pub monitor_bin: PathBuf,
    /// The static `berth-pause` binary, installed under the run root.
    pub pause_bin: PathBuf,
    /// Reserved names (pod sandbox and container name keys) -> object ID.
    names: Mutex<HashMap<String, String>>,
    /// Per-object operation locks, so two RPCs on one object never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// SIGKILL deadlines of graceful container stops in progress (a shorter stop preempts).
    pub stop_deadlines: crate::container::stopdeadline::StopDeadlines,
    /// This process's own oom_score_adj: the lowest value its children may be given.
    pub own_oom_score_adj: i32,
    /// What this host lets containers have (capabilities, nofile limit, cgroup layout), probed
    /// once at start rather than on every CreateContainer.
    pub host_facts: crate::spec::HostFacts,
    /// Whether this kernel makes idmapped mounts (`mount_setattr`, Linux 5.12+), which pod user
    /// namespaces need; probed once at start.
    pub idmap_mounts: bool,
    /// Container and pod sandbox lifecycle events (CRI GetContainerEvents).
    pub events: crate::events::EventBus,
    /// systemd over D-Bus, under `cgroup_manager = "systemd"` (monitor scopes); `None` under
    /// cgroupfs. Set by the binary after [`Daemon::open`] ([`Daemon::connect_systemd`]).
    pub systemd: Option<crate::cgroups::systemd::SystemdClient>,
}

impl Daemon {
    /// Opens the store and the image store, resolves runtime handlers, installs the pause binary
    /// and rebuilds name reservations. Call [`crate::sandbox::recover`] and
    /// [`crate::container::recover`] afterwards to reconcile with the runtime.
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
        let mut runtimes = HashMap::new();
        let mut unavailable_runtimes = HashMap::new();
        for name in config.runtime.handlers.keys() {
            let h = &config.runtime.handlers[name];
            let root = config.handler_root(name).unwrap_or_else(|| config.run_root.join("runtime").join(name));
            match Runtime::new(name, h.path.clone(), root) {
                Ok(mut rt) => {
                    rt.systemd_cgroup = config.cgroup_driver() == crate::cgroups::Driver::Systemd;
                    runtimes.insert(name.clone(), rt);
                }
                Err(e) if *name != config.runtime.default_handler => {
                    tracing::warn!(handler = %name, error = %e, "runtime handler unavailable; requests naming it will fail");
                    unavailable_runtimes.insert(name.clone(), e.to_string());
                }
                Err(e) => return Err(e).with_context(|| format!("runtime.handlers.{name} (the default handler)")),
            }
        }
        let monitor_bin =
            if config.monitor_path.as_os_str().is_empty() { sibling_binary("berth-monitor")? } else { config.monitor_path.clone() };
        if !monitor_bin.exists() {
            anyhow::bail!("monitor binary {} does not exist (set monitor_path)", monitor_bin.display());
        }
        let pause_bin = crate::pause::install(&config.run_root)
            .with_context(|| format!("installing berth-pause under {}", config.run_root.display()))?;
        match crate::container::apparmor::ensure_default_loaded(&config.run_root) {
            Ok(crate::container::apparmor::Loaded::LoadedNow) => tracing::info!("AppArmor profile berth-default loaded"),
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(error = %why, "cannot load the AppArmor profile berth-default; pods asking for RuntimeDefault will be refused")
            }
        }
        let own_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let cni = Cni::new(config.network.clone());
        let containers = crate::container::table::ContainerTable::open(store.clone()).context("loading the container records")?;
        Ok(Daemon {
            config,
            containers,
            store,
            images,
            cni,
            runtimes,
            unavailable_runtimes,
            handler_health: Mutex::new(HashMap::new()),
            retesting: std::sync::atomic::AtomicBool::new(false),
            selftests_running: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            monitor_bin,
            pause_bin,
            names: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            stop_deadlines: Default::default(),
            own_oom_score_adj,
            idmap_mounts: crate::storage::idmap::kernel_supports_idmap(),
            host_facts: crate::spec::HostFacts::probe(),
            events: crate::events::EventBus::default(),
            systemd: None,
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

    /// Whether pods of `handler` may have their own user namespace: the runtime lists the `user`
    /// namespace, its self-test made one and idmapped the layer store, and the kernel makes
    /// idmapped mounts.
    pub fn user_namespaces(&self, handler: &str) -> std::result::Result<(), String> {
        let rt = self.runtime(handler).map_err(|e| e.to_string())?;
        if !self.idmap_mounts {
            return Err("this kernel has no mount_setattr (Linux < 5.12): pod user namespaces need idmapped mounts".into());
        }
        match self.health(&rt.handler) {
            Some(h) => h.user_namespaces,
            None => Err("the handler was not self-tested".into()),
        }
    }

    /// The last self-test result of `handler` (`None` for a handler that is not configured or
    /// whose binary is missing).
    pub fn health(&self, handler: &str) -> Option<crate::sandbox::selftest::Health> {
        self.handler_health.lock().unwrap_or_else(|p| p.into_inner()).get(handler).cloned()
    }

    /// The runtime for a NEW pod sandbox of `handler`: [`Daemon::runtime`], and the handler's
    /// self-test must have passed. Existing pods and containers keep using [`Daemon::runtime`]
    /// (state, kill, delete) whatever the self-test says, so they can always be stopped.
    /// Errors: FailedPrecondition with the runtime's own message.
    pub fn runtime_for_new_pod(&self, handler: &str) -> Result<&Runtime> {
        let rt = self.runtime(handler)?;
        if let Some(Err(why)) = self.health(&rt.handler).map(|h| h.runs) {
            return Err(Error::FailedPrecondition(format!("runtime handler {:?} cannot run on this host: self-test: {why}", rt.handler)));
        }
        Ok(rt)
    }

    /// Runs every handler's self-test on a thread of its own and records the results as they
    /// come; returns at once. Until a handler's result is in, it is taken as usable and without
    /// user namespaces (a runtime that hangs must not keep the daemon from serving, and the
    /// thread is not waited for at shutdown).
    pub fn start_self_tests(self: &Arc<Self>) {
        let d = self.clone();
        let running = SelfTestRunning::enter(&self.selftests_running);
        let spawned = std::thread::Builder::new().name("berth-selftest".into()).spawn(move || {
            let _running = running;
            let results = self_test_handlers(&d.config, &d.pause_bin, &d.runtimes);
            d.handler_health.lock().unwrap_or_else(|p| p.into_inner()).extend(results);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the runtime handler self-test");
        }
    }

    /// Waits up to `max` for running self-tests to finish (each deletes what it made); for a
    /// shutdown. Returns whether none is left running.
    pub fn wait_self_tests(&self, max: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        while self.selftests_running.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// Whether a failed self-test is due to run again ([`Daemon::retest_failed_handlers`]).
    pub fn retest_due(&self) -> bool {
        self.handler_health.lock().unwrap_or_else(|p| p.into_inner()).values().any(|h| h.retest_due(RETEST_AFTER))
    }

    /// Re-runs the self-test of every handler whose last one failed more than
    /// [`RETEST_AFTER`] ago, and records the new results. Blocking; one at a time (a call while
    /// another runs returns at once).
    pub fn retest_failed_handlers(&self) {
        use std::sync::atomic::Ordering;
        if self.retesting.swap(true, Ordering::SeqCst) {
            return;
        }
        let _running = SelfTestRunning::enter(&self.selftests_running);
        let due: Vec<String> = self
            .handler_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, h)| h.retest_due(RETEST_AFTER))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(rt) = self.runtimes.get(&name) else { continue };
            let dir = self.config.run_root.join("selftest").join(&name);
            let h = crate::sandbox::selftest::check(rt, &self.pause_bin, &dir, &self.config.cgroup_parent, &self.config.root);
            tracing::info!(handler = %name, runs = ?h.runs, user_namespaces = ?h.user_namespaces, "runtime handler re-tested");
            self.handler_health.lock().unwrap_or_else(|p| p.into_inner()).insert(name, h);
        }
        self.retesting.store(false, Ordering::SeqCst);
    }

    /// The runtime for a CRI `runtime_handler` (empty = the default handler).
    ///
    /// Errors: FailedPrecondition for a configured handler that cannot run here (with why);
    /// InvalidArgument naming an unknown handler and the configured ones.
    pub fn runtime(&self, handler: &str) -> Result<&Runtime> {
        let name = if handler.is_empty() { self.config.runtime.default_handler.as_str() } else { handler };
        if let Some(why) = self.unavailable_runtimes.get(name) {
            return Err(Error::FailedPrecondition(format!("runtime handler {name:?} is configured but cannot run on this host: {why}")));
        }
        self.runtimes.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.runtimes.keys().map(String::as_str).collect();
            known.sort();
            Error::invalid("runtime_handler", format!("no runtime handler {name:?} is configured (configured: {})", known.join(", ")))
        })
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

    /// Forgets the lock of a removed object.
    pub fn drop_lock(&self, id: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    /// `<run_root>/<kind>/<id>`: volatile per-object directory (bundle, exit file, sockets).
    pub fn run_dir(&self, kind: &str, id: &str) -> PathBuf {
        self.config.run_root.join(kind).join(id)
    }

    /// `<root>/<kind>/<id>`: persistent per-object directory (writable layer, hosts files).
    pub fn state_dir(&self, kind: &str, id: &str) -> PathBuf {
        self.config.root.join(kind).join(id)
    }
}

/// A binary installed beside the running executable (`target/debug/berth` ->
/// `target/debug/berth-monitor`, `/usr/local/bin/berth` -> `/usr/local/bin/berth-monitor`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(dir.join(name))
}

/// How long a failed self-test result stands before [`Daemon::retest_failed_handlers`] runs it
/// again.
pub const RETEST_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Self-tests every runtime handler in parallel (`sandbox::selftest`, ~0.1 s each) and returns
/// the results. A handler that fails stays configured (what already runs under it must still be
/// stopped and removed) but takes no new pods, and Status reports it; a failing default handler
/// also makes RuntimeReady false.
fn self_test_handlers(
    config: &Config,
    pause_bin: &Path,
    runtimes: &HashMap<String, Runtime>,
) -> HashMap<String, crate::sandbox::selftest::Health> {
    let base = config.run_root.join("selftest");
    let results: Vec<(String, crate::sandbox::selftest::Health)> = std::thread::scope(|s| {
        let handles: Vec<_> = runtimes
            .iter()
            .map(|(name, rt)| {
                let dir = base.join(name);
                let parent = config.cgroup_parent.as_str();
                let root = config.root.as_path();
                (name.clone(), s.spawn(move || crate::sandbox::selftest::check(rt, pause_bin, &dir, parent, root)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let health = h.join().unwrap_or_else(|_| crate::sandbox::selftest::Health {
                    runs: Err("the self-test panicked".into()),
                    user_namespaces: Err("the self-test panicked".into()),
                    tested: std::time::Instant::now(),
                });
                (name, health)
            })
            .collect()
    });
    for (name, h) in &results {
        match &h.runs {
            Ok(()) => tracing::info!(handler = %name, user_namespaces = ?h.user_namespaces, "runtime handler self-test passed"),
            Err(why) => {
                tracing::warn!(handler = %name, error = %why, "runtime handler cannot run here; new pods naming it will be refused")
            }
        }
    }
    results.into_iter().collect()
}
