//! network: a mini-libcni (conflist loading, ADD/DEL, result cache, capabilities) and pinned
//! network namespaces, in the role libcni + ocicni play for CRI-O.
//!
//! [`Cni::setup`] runs the pod network's plugin list (ADD, in order, chaining `prevResult`) and
//! caches the result like libcni. [`Cni::teardown`] runs DEL in reverse, from the cached config
//! and result when present. Namespaces are pinned with [`netns::create`] before ADD, which also
//! brings their `lo` up, and removed with [`netns::remove`].
//!
//! `lo`: CRI-O and containerd run the CNI `loopback` plugin as a second network on `lo`; all it
//! does on ADD is set `lo` up (its DEL sets it down in a namespace about to go). berth sets it up
//! itself when it makes the namespace (one rtnetlink message instead of a plugin process, about
//! 6 ms here, on every RunPodSandbox and again on every StopPodSandbox). Pods attached by an
//! older berth still have a cached `cni-loopback` attachment, which teardown DELs as before.

pub mod cache;
pub mod conf;
pub mod exec;
pub mod netns;
mod types;

use serde_json::{Map, Value};

pub use conf::NetworkConfList;
pub use types::{AttachRequest, AttachResult, NetworkError, PortMapping};

use exec::Invocation;

/// Interface name the loopback network is attached on.
const LOOPBACK_IFNAME: &str = "lo";

/// The CNI client for pod sandboxes. Cheap to clone; holds only the `[network]` config and reads
/// the conf dir afresh on every call, so a config dropped in later is picked up (as ocicni's
/// directory watch does).
#[derive(Debug, Clone)]
pub struct Cni {
    cfg: crate::config::NetworkConfig,
}

impl Cni {
    /// A client for `cfg` (`conf_dir`, `plugin_dirs`, `cache_dir`, `default_network`).
    pub fn new(cfg: crate::config::NetworkConfig) -> Cni {
        Cni { cfg }
    }

    /// The CRI `NetworkReady` condition: `Ok(network name)` when the conf dir holds a valid pod
    /// network, else the reason (e.g. "no CNI network config found in /etc/cni/net.d").
    /// Loads the config fresh on each call. Errors: see [`conf::load_network`].
    pub fn status(&self) -> Result<String, NetworkError> {
        conf::load_network(&self.cfg).map(|n| n.name)
    }

    /// Attaches the pod: ADD of the pod network on `req.ifname` (`lo` is up already: see the
    /// module docs). On failure what was added is deleted again and the plugin's error returned.
    /// Returns the pod network's final result and its IPs (IPv4 first).
    /// Errors: config errors ([`NetworkError::NoConfig`], ...), [`NetworkError::PluginNotFound`],
    /// [`NetworkError::PluginFailed`] (with the plugin's CNI error code and message), cache errors.
    pub async fn setup(&self, req: &AttachRequest) -> Result<AttachResult, NetworkError> {
        let net = conf::load_network(&self.cfg)?;
        let caps = exec::capability_args(req);
        let started = std::time::Instant::now();
        let result = self.add_list(&net, req, &req.ifname, &caps).await?;
        tracing::debug!(sandbox = %req.container_id, network = %net.name, elapsed_ms = started.elapsed().as_millis() as u64, "CNI ADD done");
        Ok(AttachResult { ips: exec::result_ips(&result), result })
    }

    /// Detaches the pod: DEL of a cached loopback attachment (pods attached by an older berth),
    /// then of the pod network, each plugin list in reverse order. Uses the cached config, result (as `prevResult` for CNI >= 0.4.0) and
    /// capability args of each cached attachment of `req.container_id`; without a cache entry it
    /// uses the current config with no `prevResult`; without either there is nothing to delete.
    /// Every plugin runs even when an earlier one fails; a cache entry is removed only when all of
    /// its plugins succeeded, so a retry can use it. A vanished netns is fine (plugins tolerate it);
    /// a file that no longer holds one is sent as no netns ([`del_netns`]).
    /// Errors: [`NetworkError::TeardownFailed`] listing every failed plugin.
    pub async fn teardown(&self, req: &AttachRequest) -> Result<(), NetworkError> {
        let mut errors = Vec::new();
        if !cache::find(&self.cfg.cache_dir, &req.container_id, LOOPBACK_IFNAME).is_empty() {
            // An unusable cache entry still gets its DEL, through the loopback config it had.
            errors.extend(self.teardown_ifname(req, LOOPBACK_IFNAME, Some(NetworkConfList::loopback())).await);
        }
        let current = conf::load_network(&self.cfg).ok();
        errors.extend(self.teardown_ifname(req, &req.ifname, current).await);
        if errors.is_empty() {
            return Ok(());
        }
        let network =
            errors.iter().map(|(n, _)| n.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", ");
        let errors = errors.into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ");
        Err(NetworkError::TeardownFailed { network, container_id: req.container_id.clone(), errors })
    }

    /// DEL of every cached attachment on `ifname`, or of `fallback` when none is cached.
    /// Returns `(network, error)` for each failed plugin.
    async fn teardown_ifname(&self, req: &AttachRequest, ifname: &str, fallback: Option<NetworkConfList>) -> Vec<(String, NetworkError)> {
        let mut errors = Vec::new();
        let entries = cache::find(&self.cfg.cache_dir, &req.container_id, ifname);
        let mut inv = Invocation::new(req, ifname, &self.cfg.plugin_dirs);
        inv.netns = del_netns(&inv.netns);
        if entries.is_empty() {
            let Some(net) = fallback else {
                tracing::warn!(sandbox = %req.container_id, ifname, "CNI DEL: no cached attachment and no network config; nothing to delete");
                return errors;
            };
            let caps = exec::capability_args(req);
            errors.extend(self.del_list(&net, &inv, None, &caps).await.into_iter().map(|e| (net.name.clone(), e)));
            return errors;
        }
        for path in entries {
            let cached = cache::read(&path).and_then(|c| {
                let c = c.ok_or_else(|| NetworkError::Cache { path: path.clone(), message: "vanished".into() })?;
                let raw: Value = serde_json::from_slice(&c.config)
                    .map_err(|e| NetworkError::Cache { path: path.clone(), message: format!("config: {e}") })?;
                Ok((NetworkConfList::from_value(raw, &path)?, c))
            });
            let (net, result, caps) = match cached {
                Ok((net, c)) => {
                    if req.netns.as_os_str().is_empty() && !c.netns.is_empty() {
                        inv.netns = c.netns.clone().into();
                    }
                    inv.netns = del_netns(&inv.netns);
                    let caps = if c.capability_args.is_empty() { exec::capability_args(req) } else { c.capability_args };
                    (net, c.result, caps)
                }
                Err(e) => match &fallback {
                    Some(net) => {
                        tracing::warn!(sandbox = %req.container_id, error = %e, "unusable CNI cache entry; deleting with the current config");
                        (net.clone(), None, exec::capability_args(req))
                    }
                    None => {
                        errors.push((path.display().to_string(), e));
                        continue;
                    }
                },
            };
            let failed = self.del_list(&net, &inv, result.as_ref(), &caps).await;
            if failed.is_empty() {
                if let Err(e) = cache::remove(&path) {
                    errors.push((net.name.clone(), e));
                }
            }
            errors.extend(failed.into_iter().map(|e| (net.name.clone(), e)));
        }
        errors
    }

    /// ADD of every plugin of `net` in order, chaining results; caches the final result.
    /// On failure runs DEL (reverse) over the plugins tried so far, the failed one included,
    /// since a plugin may have half-configured before failing.
    async fn add_list(
        &self,
        net: &NetworkConfList,
        req: &AttachRequest,
        ifname: &str,
        caps: &Map<String, Value>,
    ) -> Result<Value, NetworkError> {
        let inv = Invocation::new(req, ifname, &self.cfg.plugin_dirs);
        let mut prev: Option<Value> = None;
        let mut failure = None;
        for (i, plugin) in net.plugins.iter().enumerate() {
            match self.run_plugin("ADD", net, plugin, &inv, prev.as_ref(), caps).await {
                Ok(Some(r)) => prev = Some(r),
                Ok(None) => {
                    failure = Some((
                        i,
                        NetworkError::BadResult {
                            plugin: plugin_type(plugin),
                            command: "ADD",
                            message: "empty output; ADD must print a result".into(),
                        },
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some((i, e));
                    break;
                }
            }
        }
        let outcome = match (failure, prev) {
            (None, Some(result)) => {
                let entry = cache::CachedAttachment {
                    kind: cache::CACHE_KIND.into(),
                    container_id: req.container_id.clone(),
                    config: serde_json::to_vec(&net.raw).unwrap_or_default(),
                    if_name: ifname.into(),
                    network_name: net.name.clone(),
                    netns: req.netns.to_string_lossy().into_owned(),
                    cni_args: cache::split_cni_args(&inv.cni_args),
                    capability_args: caps.clone(),
                    result: Some(result.clone()),
                };
                match cache::write(&self.cfg.cache_dir, &entry) {
                    Ok(_) => return Ok(result),
                    Err(e) => (net.plugins.len(), e, Some(result)),
                }
            }
            (Some((i, e)), prev) => (i + 1, e, prev),
            (None, None) => unreachable_empty_list(net),
        };
        let (tried, err, prev) = outcome;
        let partial = NetworkConfList { plugins: net.plugins[..tried.min(net.plugins.len())].to_vec(), ..net.clone() };
        for d in self.del_list(&partial, &inv, prev.as_ref(), caps).await {
            tracing::warn!(sandbox = %req.container_id, network = %net.name, error = %d, "CNI DEL while undoing a failed ADD");
        }
        Err(err)
    }

    /// DEL of every plugin of `net` in reverse; all run; returns the errors.
    async fn del_list(
        &self,
        net: &NetworkConfList,
        inv: &Invocation,
        result: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Vec<NetworkError> {
        let prev = if exec::version_at_least(&net.cni_version, 0, 4) { result } else { None };
        let mut errors = Vec::new();
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.run_plugin("DEL", net, plugin, inv, prev, caps).await {
                tracing::warn!(container = %inv.container_id, network = %net.name, error = %e, "CNI DEL failed; continuing with the other plugins");
                errors.push(e);
            }
        }
        errors
    }

    async fn run_plugin(
        &self,
        command: &'static str,
        net: &NetworkConfList,
        plugin: &Value,
        inv: &Invocation,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Result<Option<Value>, NetworkError> {
        let binary = exec::find_plugin(&self.cfg.plugin_dirs, &plugin_type(plugin))?;
        let config = exec::plugin_config(plugin, &net.name, &net.cni_version, prev, caps);
        exec::exec_plugin(&binary, command, inv, &net.name, &config).await
    }
}

fn plugin_type(plugin: &Value) -> String {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A validated list has at least one plugin, so ADD always ends with a result or a failure.
fn unreachable_empty_list(net: &NetworkConfList) -> (usize, NetworkError, Option<Value>) {
    (0, NetworkError::BadConfig { path: net.source.clone(), field: "plugins".into(), message: "the list is empty".into() }, None)
}

#[cfg(test)]
mod tests;

/// The `CNI_NETNS` of a DEL: `netns` as it is, but empty when the path exists and no namespace is
/// mounted on it any more (unmounted by hand, or a pin file on a disk that outlived a reboot).
/// Plugins skip their in-namespace part for a missing path but fail on such a file ("unknown FS
/// magic"); with no netns they still release IPs and host-side state, as containerd and CRI-O
/// send DEL for a pod whose namespace is gone (CNI spec: DEL must tolerate missing resources).
fn del_netns(netns: &std::path::Path) -> std::path::PathBuf {
    if !netns.as_os_str().is_empty() && netns.exists() && !netns::is_pinned(netns) {
        tracing::info!(netns = %netns.display(), "the pod's network namespace is gone; CNI DEL without it");
        return std::path::PathBuf::new();
    }
    netns.to_path_buf()
}
