//! The OCI runtime handlers (CRI `runtime_handler`) and what their self-test found.
//!
//! [`Handlers`] resolves every `[runtime.handlers.NAME]` of the config once at start: a handler
//! whose binary is missing stays listed as unavailable, with why (reported in Status verbose info
//! and in the error of a request naming it, never silently dropped); a missing default handler
//! stops the daemon. Each usable handler is then self-tested ([`selftest`]) on a background
//! thread, and a failed one is re-tested at most once a minute from Status, so a transient
//! failure does not stick. A handler whose self-test failed takes no new pods, but what already
//! runs under it can always be stopped and removed.
//!
//! This module imports the runtime (`oci`), the spec layer (the self-test creates the infra
//! container every pod gets) and the lifecycle error type; nothing above it.

pub mod selftest;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::oci::{OciError, Runtime};
use selftest::Health;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a failed self-test result stands before [`Handlers::retest_failed`] runs it again.
pub const RETEST_AFTER: Duration = Duration::from_secs(60);

/// Errors of [`Handlers::open`].
#[derive(Debug, thiserror::Error)]
pub enum HandlersError {
    /// The default handler's runtime binary cannot be found: berth cannot run any pod.
    #[error("runtime.handlers.{name} (the default handler): {source}")]
    Default {
        name: String,
        #[source]
        source: OciError,
    },
}

/// Where and how the self-tests run: `<run_root>/selftest/<handler>`, under the configured
/// cgroup parent, with the pause binary, idmapping berth's root.
#[derive(Debug, Clone)]
struct SelfTestPlace {
    dir: PathBuf,
    cgroup_parent: String,
    root: PathBuf,
    pause_bin: PathBuf,
}

/// The configured runtime handlers, their availability and their self-test results.
#[derive(Debug)]
pub struct Handlers {
    /// Usable runtimes by handler name.
    runtimes: HashMap<String, Runtime>,
    /// Configured handlers that cannot run here, with the reason.
    unavailable: HashMap<String, String>,
    /// `runtime.default_handler`: what an empty CRI `runtime_handler` means.
    default: String,
    /// The last self-test result per handler name.
    health: Mutex<HashMap<String, Health>>,
    /// Set while a re-test runs, so Status calls do not pile them up.
    retesting: AtomicBool,
    /// Self-tests running now (the one at start, re-tests): a shutdown waits for them, since a
    /// daemon that exits mid-test leaves the test's `runtime create` and its cgroup behind.
    running: Arc<AtomicUsize>,
    /// Whether this kernel makes idmapped mounts (`mount_setattr`, Linux 5.12+), which pod user
    /// namespaces need; probed once at start.
    idmap_mounts: bool,
    place: SelfTestPlace,
}

impl Handlers {
    /// Resolves every configured handler (the runtime binary, its `features`, its `--root`,
    /// `--systemd-cgroup` under the systemd driver). Runs no self-test yet
    /// ([`Handlers::start_self_tests`]). Errors: [`HandlersError::Default`].
    pub fn open(config: &Config, pause_bin: &Path) -> std::result::Result<Handlers, HandlersError> {
        let mut runtimes = HashMap::new();
        let mut unavailable = HashMap::new();
        for (name, h) in &config.runtime.handlers {
            let root = config.handler_root(name).unwrap_or_else(|| config.run_root.join("runtime").join(name));
            match Runtime::new(name, h.path.clone(), root) {
                Ok(mut rt) => {
                    rt.systemd_cgroup = config.cgroup_driver() == crate::cgroups::Driver::Systemd;
                    runtimes.insert(name.clone(), rt);
                }
                Err(e) if *name != config.runtime.default_handler => {
                    tracing::warn!(handler = %name, error = %e, "runtime handler unavailable; requests naming it will fail");
                    unavailable.insert(name.clone(), e.to_string());
                }
                Err(source) => return Err(HandlersError::Default { name: name.clone(), source }),
            }
        }
        Ok(Handlers {
            runtimes,
            unavailable,
            default: config.runtime.default_handler.clone(),
            health: Mutex::new(HashMap::new()),
            retesting: AtomicBool::new(false),
            running: Arc::new(AtomicUsize::new(0)),
            idmap_mounts: crate::storage::idmap::kernel_supports_idmap(),
            place: SelfTestPlace {
                dir: config.run_root.join("selftest"),
                cgroup_parent: config.cgroup_parent.clone(),
                root: config.root.clone(),
                pause_bin: pause_bin.to_path_buf(),
            },
        })
    }

    /// The usable runtimes by handler name.
    pub fn runtimes(&self) -> &HashMap<String, Runtime> {
        &self.runtimes
    }

    /// Configured handlers that cannot run here, with the reason.
    pub fn unavailable(&self) -> &HashMap<String, String> {
        &self.unavailable
    }

    /// The default handler's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Whether this kernel makes idmapped mounts (probed at start).
    pub fn idmap_mounts(&self) -> bool {
        self.idmap_mounts
    }

    /// The runtime for a CRI `runtime_handler` (empty = the default handler).
    ///
    /// Errors: FailedPrecondition for a configured handler that cannot run here (with why);
    /// InvalidArgument naming an unknown handler and the configured ones.
    pub fn runtime(&self, handler: &str) -> Result<&Runtime> {
        let name = if handler.is_empty() { self.default.as_str() } else { handler };
        if let Some(why) = self.unavailable.get(name) {
            return Err(Error::FailedPrecondition(format!("runtime handler {name:?} is configured but cannot run on this host: {why}")));
        }
        self.runtimes.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.runtimes.keys().map(String::as_str).collect();
            known.sort();
            Error::invalid("runtime_handler", format!("no runtime handler {name:?} is configured (configured: {})", known.join(", ")))
        })
    }

    /// The runtime for a NEW pod sandbox of `handler`: [`Handlers::runtime`], and the handler's
    /// self-test must have passed. Existing pods and containers keep using [`Handlers::runtime`]
    /// (state, kill, delete) whatever the self-test says, so they can always be stopped.
    /// Errors: FailedPrecondition with the runtime's own message.
    pub fn runtime_for_new_pod(&self, handler: &str) -> Result<&Runtime> {
        let rt = self.runtime(handler)?;
        if let Some(Err(why)) = self.health(&rt.handler).map(|h| h.runs) {
            return Err(Error::FailedPrecondition(format!("runtime handler {:?} cannot run on this host: self-test: {why}", rt.handler)));
        }
        Ok(rt)
    }

    /// Whether pods of `handler` may have their own user namespace: the runtime lists the `user`
    /// namespace, its self-test made one and idmapped the layer store, and the kernel makes
    /// idmapped mounts. Errors: why not, as a sentence.
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

    /// The last self-test result of `handler` (`None` for a handler that is not configured, whose
    /// binary is missing, or whose first test has not finished).
    pub fn health(&self, handler: &str) -> Option<Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).get(handler).cloned()
    }

    /// Runs every handler's self-test on a thread of its own and records the results as they
    /// come; returns at once. Until a handler's result is in, it is taken as usable and without
    /// user namespaces (a runtime that hangs must not keep the daemon from serving).
    pub fn start_self_tests(self: &Arc<Self>) {
        let h = self.clone();
        let running = Running::enter(&self.running);
        let spawned = std::thread::Builder::new().name("berth-selftest".into()).spawn(move || {
            let _running = running;
            let results = h.test_all();
            h.health.lock().unwrap_or_else(|p| p.into_inner()).extend(results);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the runtime handler self-test");
        }
    }

    /// Waits up to `max` for running self-tests to finish (each deletes what it made); for a
    /// shutdown. Returns whether none is left running.
    pub fn wait_self_tests(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while self.running.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Whether a failed self-test is due to run again ([`Handlers::retest_failed`]).
    pub fn retest_due(&self) -> bool {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).values().any(|h| h.retest_due(RETEST_AFTER))
    }

    /// Re-runs the self-test of every handler whose last one failed more than [`RETEST_AFTER`]
    /// ago, and records the new results. Blocking; one at a time (a call while another runs
    /// returns at once).
    pub fn retest_failed(&self) {
        if self.retesting.swap(true, Ordering::SeqCst) {
            return;
        }
        let _running = Running::enter(&self.running);
        let due: Vec<String> = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, h)| h.retest_due(RETEST_AFTER))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(rt) = self.runtimes.get(&name) else { continue };
            let h = self.test_one(&name, rt);
            tracing::info!(handler = %name, runs = ?h.runs, user_namespaces = ?h.user_namespaces, "runtime handler re-tested");
            self.health.lock().unwrap_or_else(|p| p.into_inner()).insert(name, h);
        }
        self.retesting.store(false, Ordering::SeqCst);
    }

    fn test_one(&self, name: &str, rt: &Runtime) -> Health {
        let p = &self.place;
        selftest::check(rt, &p.pause_bin, &p.dir.join(name), &p.cgroup_parent, &p.root)
    }

    /// Self-tests every handler in parallel (~0.1 s each) and returns the results, logged. A
    /// failing default handler also makes RuntimeReady false (Status).
    fn test_all(&self) -> HashMap<String, Health> {
        let results: Vec<(String, Health)> = std::thread::scope(|s| {
            let handles: Vec<_> = self.runtimes.iter().map(|(name, rt)| (name.clone(), s.spawn(move || self.test_one(name, rt)))).collect();
            handles
                .into_iter()
                .map(|(name, h)| {
                    let health = h.join().unwrap_or_else(|_| Health {
                        runs: Err("the self-test panicked".into()),
                        user_namespaces: Err("the self-test panicked".into()),
                        tested: Instant::now(),
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
}

/// Counts one running self-test for as long as it lives (also when the test panics).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(counter: &Arc<AtomicUsize>) -> Running {
        counter.fetch_add(1, Ordering::SeqCst);
        Running(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
