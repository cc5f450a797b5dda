//! The whole configuration model: defaults, file loading, drop-ins, environment, validation.
//!
//! Sources, later wins (DESIGN.md "Config"):
//! 1. built-in defaults ([`Config::default`]),
//! 2. `/etc/berth/berth.toml` (or the one file given with `--config`, which replaces 2 and 3),
//! 3. drop-ins `/etc/berth/berth.d/*.toml` in lexical order,
//! 4. `BERTH_*` environment variables: `BERTH_ROOT=/x` sets `root`, a double underscore descends
//!    into a table (`BERTH_NETWORK__CONF_DIR=/x` sets `network.conf_dir`); the value is read as a
//!    TOML value when it parses as one (`["a","b"]`, `true`, `3`), else as a string,
//! 5. command-line flags, applied by the binary on the returned [`Config`].
//!
//! Every file is checked on its own first, so an unknown key or a bad value is reported with the
//! file and the key (`/etc/berth/berth.d/10-x.toml: unknown field `listn`, expected one of ...`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default location of the main configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/berth/berth.toml";
/// Default drop-in directory, read in lexical order after the main file.
pub const DEFAULT_DROPIN_DIR: &str = "/etc/berth/berth.d";

/// Errors from loading or validating configuration. Each names the file (or variable) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A `BERTH_*` variable does not name a known key or holds a bad value.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// The merged configuration is inconsistent.
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The effective configuration of a berth daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Path of the CRI unix socket (mode 0660).
    pub listen: PathBuf,
    /// Persistent state: the metadata store, images, layers, container writable layers.
    pub root: PathBuf,
    /// Volatile state: bundles, monitor sockets, exit files, rootfs mounts.
    pub run_root: PathBuf,
    /// Directory where pinned network namespaces are bind-mounted (`ip netns` uses /var/run/netns).
    pub netns_dir: PathBuf,
    /// `tracing` filter for the daemon's log, e.g. `info` or `berth=debug`.
    pub log_level: String,
    /// Format of the daemon's log lines on stderr: `text` (human-readable) or `json` (one JSON
    /// object per line, tracing-subscriber's JSON formatter).
    pub log_format: String,
    /// Path of the `berth-monitor` binary; empty means "next to the running `berth` binary".
    pub monitor_path: PathBuf,
    /// The cgroup driver: `cgroupfs` or `systemd` (CRI-O's `cgroup_manager`; kubelet's
    /// `--cgroup-driver` must match, and RuntimeConfig reports it). See [`crate::cgroups`].
    pub cgroup_manager: String,
    /// cgroup parent for pods whose config gives none: a cgroupfs path (`/berth`) under the
    /// cgroupfs driver, a slice name under the systemd driver. Default `/berth`, or `berth.slice`
    /// when `cgroup_manager = "systemd"` and no source sets this key.
    pub cgroup_parent: String,
    /// Seconds a StopPodSandbox gives each container before SIGKILL.
    pub pod_stop_timeout: u64,
    /// Largest size in bytes of one container's CRI log file; 0 = unlimited. When the next
    /// record would take the file past it, the monitor replaces the file with an empty one and
    /// goes on writing (conmon's `--log-size-max`). When non-zero, at least 8192 (as CRI-O).
    pub log_size_max: u64,
    /// OCI runtimes.
    pub runtime: RuntimeConfig,
    /// CNI.
    pub network: NetworkConfig,
    /// Registries and image store.
    pub image: ImageConfig,
    /// The streaming (exec/attach/port-forward) server.
    pub streaming: StreamingConfig,
    /// The opt-in Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// NRI plugins (off by default).
    pub nri: NriConfig,
}

/// `[runtime]`: the OCI runtime handlers (CRI `runtime_handler` / RuntimeClass).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Handler used when a request names none (`runtime_handler = ""`).
    pub default_handler: String,
    /// Handlers by name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Directories of OCI hook files (oci-hooks(5), the `hooks.d` format CRI-O and podman
    /// read), read at each CreateContainer; a file name in a later directory masks the same name
    /// in an earlier one; missing directories are skipped. See `spec::hooks`.
    pub hooks_dir: Vec<PathBuf>,
    /// Run pods that share no PID namespace (kubelet's default) and have no user namespace of
    /// their own without an infra process: their IPC, UTS and network namespaces are pinned to
    /// files instead (CRI-O's `drop_infra_ctr`; see `sandbox::pinns`). `false` gives every pod
    /// an infra container, as before. Default `true`.
    pub drop_infra: bool,
}

/// `[runtime.handlers.NAME]`: one runc-compatible runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerConfig {
    /// The runtime binary; looked up on PATH when not absolute.
    pub path: PathBuf,
    /// The runtime's `--root`; empty means `<run_root>/runtime/<handler name>`.
    pub root: PathBuf,
}

/// `[network]`: CNI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Directory of CNI network configs (`*.conflist`, `*.conf`, `*.json`); the first in lexical
    /// order is the pod network, as libcni and CRI-O choose it.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for CNI plugin binaries.
    pub plugin_dirs: Vec<PathBuf>,
    /// libcni's result cache directory (libcni default `/var/lib/cni`).
    pub cache_dir: PathBuf,
    /// Name of the network to use; empty means the first config in `conf_dir`.
    pub default_network: String,
}

/// `[image]`: registries and the image store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Per-registry settings keyed by registry host (`docker.io`, `registry.k8s.io`, ...).
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// `[image.registries."HOST"]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Mirrors tried in order, as URLs (`http://127.0.0.1:5000`, `https://mirror.example`).
    pub mirrors: Vec<String>,
    /// When true the upstream registry itself is never tried.
    pub mirrors_only: bool,
}

/// `[streaming]`: the HTTP server for Exec, Attach and PortForward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address to bind.
    pub address: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// PEM certificate chain for HTTPS; empty (with `tls_key_file`) serves plain HTTP.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
}

/// `[metrics]`: berth's own Prometheus metrics (text format 0.0.4 on `GET /metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the endpoint (off by default, as CRI-O's `enable_metrics`).
    pub enabled: bool,
    /// IP address to bind.
    pub address: String,
    /// TCP port; 0 picks a free one (logged at start).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: false, address: "127.0.0.1".into(), port: 9090 }
    }
}

/// `[nri]`: the Node Resource Interface socket NRI plugins connect to (containerd's
/// `io.containerd.nri.v1.nri` plugin, CRI-O's `[crio.nri]`). See docs/nri.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NriConfig {
    /// Accept plugins (off by default: the socket path is shared with containerd's).
    pub enable: bool,
    /// The socket plugins connect to.
    pub socket_path: PathBuf,
    /// Plugins berth launches at start: executables named `<index>-<name>`.
    pub plugin_dir: PathBuf,
    /// Their configuration files (`<index>-<name>.conf` or `<name>.conf`), sent in Configure.
    pub plugin_config_dir: PathBuf,
    /// How long a connected plugin has to call RegisterPlugin, in milliseconds (NRI's 5 s).
    pub registration_timeout_ms: u64,
    /// How long a plugin has to answer Configure or an event, in milliseconds (NRI's 2 s). A
    /// plugin that does not is dropped; the operation goes on without it.
    pub request_timeout_ms: u64,
    /// How long a new plugin has to answer Synchronize, in milliseconds. Operations that
    /// create pods and containers wait meanwhile.
    pub sync_timeout_ms: u64,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: false,
            socket_path: "/var/run/nri/nri.sock".into(),
            plugin_dir: "/opt/nri/plugins".into(),
            plugin_config_dir: "/etc/nri/conf.d".into(),
            registration_timeout_ms: 5000,
            request_timeout_ms: 2000,
            sync_timeout_ms: 10000,
        }
    }
}

/// The values `log_format` accepts.
pub const LOG_FORMATS: &[&str] = &["text", "json"];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "/run/berth/berth.sock".into(),
            root: "/var/lib/berth".into(),
            run_root: "/run/berth".into(),
            netns_dir: "/var/run/netns".into(),
            log_level: "info".into(),
            log_format: "text".into(),
            monitor_path: PathBuf::new(),
            cgroup_manager: "cgroupfs".into(),
            cgroup_parent: crate::cgroups::Driver::Cgroupfs.default_parent().into(),
            pod_stop_timeout: 10,
            log_size_max: 0,
            runtime: RuntimeConfig::default(),
            network: NetworkConfig::default(),
            image: ImageConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let mut handlers = BTreeMap::new();
        handlers.insert("runc".to_string(), HandlerConfig::default());
        RuntimeConfig {
            default_handler: "runc".into(),
            handlers,
            hooks_dir: vec!["/usr/share/containers/oci/hooks.d".into(), "/etc/containers/oci/hooks.d".into()],
            drop_infra: true,
        }
    }
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig { path: "runc".into(), root: PathBuf::new() }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: "/etc/cni/net.d".into(),
            plugin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cache_dir: "/var/lib/cni".into(),
            default_network: String::new(),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig { address: "127.0.0.1".into(), port: 0, tls_cert_file: PathBuf::new(), tls_key_file: PathBuf::new() }
    }
}

/// Where [`Config::load`] reads from.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config FILE`: read only this file (no default file, no drop-ins).
    pub config_file: Option<PathBuf>,
    /// Override of the default main file location (tests); ignored when `config_file` is set.
    pub default_file: Option<PathBuf>,
    /// Override of the drop-in directory (tests); ignored when `config_file` is set.
    pub dropin_dir: Option<PathBuf>,
    /// Environment pairs to apply; `None` reads the process environment.
    pub env: Option<Vec<(String, String)>>,
}

impl Config {
    /// The cgroup driver `cgroup_manager` names (cgroupfs when it names none, which
    /// [`Config::validate`] refuses).
    pub fn cgroup_driver(&self) -> crate::cgroups::Driver {
        crate::cgroups::Driver::parse(&self.cgroup_manager).unwrap_or_default()
    }

    /// Loads the effective configuration from the sources listed in the module docs.
    ///
    /// A missing default file or drop-in directory is not an error; a missing `--config` file is.
    pub fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        let files: Vec<PathBuf> = match &opts.config_file {
            Some(f) => vec![f.clone()],
            None => {
                let main = opts.default_file.clone().unwrap_or_else(|| DEFAULT_CONFIG_FILE.into());
                let mut v = Vec::new();
                if main.exists() {
                    v.push(main);
                }
                let dir = opts.dropin_dir.clone().unwrap_or_else(|| DEFAULT_DROPIN_DIR.into());
                v.extend(dropin_files(&dir)?);
                v
            }
        };
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), message: one_line(&e.to_string()) })?;
            // Check this file alone so the error names it.
            Config::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| ConfigError::Parse { path: path.clone(), message: one_line(&e.to_string()) })?;
            merge_tables(&mut merged, table);
        }
        let env: Vec<(String, String)> = match &opts.env {
            Some(e) => e.clone(),
            None => std::env::vars().collect(),
        };
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("BERTH_") else { continue };
            if rest.is_empty() || ENV_NOT_CONFIG.contains(&rest) || ENV_NOT_CONFIG_PREFIXES.iter().any(|p| rest.starts_with(p)) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let parsed = parse_env_value(&value);
            let mut overlay = toml::Table::new();
            insert_path(&mut overlay, &path, parsed);
            Config::deserialize(toml::Value::Table(overlay.clone()))
                .map_err(|e| ConfigError::Env { var: var.clone(), message: one_line(&e.to_string()) })?;
            merge_tables(&mut merged, overlay);
        }
        let parent_set = merged.contains_key("cgroup_parent");
        let mut cfg = Config::deserialize(toml::Value::Table(merged))
            .map_err(|e| ConfigError::Parse { path: "<merged configuration>".into(), message: one_line(&e.to_string()) })?;
        if !parent_set {
            if let Some(driver) = crate::cgroups::Driver::parse(&cfg.cgroup_manager) {
                cfg.cgroup_parent = driver.default_parent().into();
            }
        }
        cfg.validate()?;
        // A slice given as kubelet writes it (its cgroupfs path) is kept as the slice name.
        if let Ok(p) = crate::cgroups::normalize_parent(cfg.cgroup_driver(), &cfg.cgroup_parent) {
            cfg.cgroup_parent = p;
        }
        Ok(cfg)
    }

    /// Checks cross-field rules: the default handler exists, paths are absolute, and so on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("listen", &self.listen),
            ("root", &self.root),
            ("run_root", &self.run_root),
            ("netns_dir", &self.netns_dir),
            ("network.conf_dir", &self.network.conf_dir),
            ("network.cache_dir", &self.network.cache_dir),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid { key: key.into(), message: format!("{} is not an absolute path", p.display()) });
            }
        }
        if !self.runtime.handlers.contains_key(&self.runtime.default_handler) {
            return Err(ConfigError::Invalid {
                key: "runtime.default_handler".into(),
                message: format!(
                    "{:?} is not a configured handler (configured: {})",
                    self.runtime.default_handler,
                    self.runtime.handlers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        for (name, h) in &self.runtime.handlers {
            if h.path.as_os_str().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("runtime.handlers.{name}.path"),
                    message: "must name a runtime binary".into(),
                });
            }
        }
        let Some(driver) = crate::cgroups::Driver::parse(&self.cgroup_manager) else {
            return Err(ConfigError::Invalid {
                key: "cgroup_manager".into(),
                message: format!("{:?} is not a cgroup driver: \"cgroupfs\" or \"systemd\"", self.cgroup_manager),
            });
        };
        crate::cgroups::validate_parent(driver, &self.cgroup_parent)
            .map_err(|message| ConfigError::Invalid { key: "cgroup_parent".into(), message })?;
        if self.log_size_max != 0 && self.log_size_max < LOG_SIZE_MAX_MIN {
            return Err(ConfigError::Invalid {
                key: "log_size_max".into(),
                message: format!("{} bytes is too small: 0 (unlimited) or at least {LOG_SIZE_MAX_MIN}", self.log_size_max),
            });
        }
        if self.streaming.tls_cert_file.as_os_str().is_empty() != self.streaming.tls_key_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "streaming.tls_cert_file/tls_key_file".into(),
                message: "set both (HTTPS) or neither (plain HTTP)".into(),
            });
        }
        if !self.nri.socket_path.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "nri.socket_path".into(),
                message: format!("{} is not an absolute path", self.nri.socket_path.display()),
            });
        }
        for (key, ms) in [
            ("nri.registration_timeout_ms", self.nri.registration_timeout_ms),
            ("nri.request_timeout_ms", self.nri.request_timeout_ms),
            ("nri.sync_timeout_ms", self.nri.sync_timeout_ms),
        ] {
            if ms == 0 {
                return Err(ConfigError::Invalid { key: key.into(), message: "must be at least 1 (milliseconds)".into() });
            }
        }
        if !LOG_FORMATS.contains(&self.log_format.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log_format".into(),
                message: format!("{:?} is not one of {}", self.log_format, LOG_FORMATS.join(", ")),
            });
        }
        if self.metrics.address.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "metrics.address".into(),
                message: format!("{:?} is not an IP address (such as 127.0.0.1 or ::1)", self.metrics.address),
            });
        }
        for (host, r) in &self.image.registries {
            for m in &r.mirrors {
                if !(m.starts_with("http://") || m.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        key: format!("image.registries.\"{host}\".mirrors"),
                        message: format!("{m:?} must be a URL starting with http:// or https://"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The runtime `--root` for a handler: its configured root or `<run_root>/runtime/<name>`.
    pub fn handler_root(&self, name: &str) -> Option<PathBuf> {
        let h = self.runtime.handlers.get(name)?;
        Some(if h.root.as_os_str().is_empty() { self.run_root.join("runtime").join(name) } else { h.root.clone() })
    }

    /// The effective configuration as TOML with a comment above each key (for `berth config`).
    pub fn to_commented_toml(&self) -> String {
        let plain = toml::to_string_pretty(self).unwrap_or_default();
        let mut out = String::from(
            "# berth effective configuration.\n# Sources, later wins: defaults, /etc/berth/berth.toml, /etc/berth/berth.d/*.toml,\n# BERTH_* environment (BERTH_A__B sets a.b), command-line flags.\n\n",
        );
        let mut section = String::new();
        for line in plain.lines() {
            let t = line.trim();
            if t.starts_with('[') && t.ends_with(']') {
                section = t.trim_matches(|c| c == '[' || c == ']').to_string();
                if let Some(c) = comment_for(&section) {
                    out.push_str(&format!("\n# {c}\n"));
                }
            } else if let Some((k, _)) = t.split_once(" = ") {
                let key = if section.is_empty() { k.to_string() } else { format!("{section}.{k}") };
                if let Some(c) = comment_for(&key) {
                    out.push_str(&format!("# {c}\n"));
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Smallest non-zero `log_size_max` in bytes (CRI-O's floor, conmon's read buffer).
pub const LOG_SIZE_MAX_MIN: u64 = 8192;

/// `BERTH_*` variables that configure something other than the daemon's config (the log filter,
/// the conformance suite's target).
const ENV_NOT_CONFIG: &[&str] = &["ENDPOINT", "BIN", "LOG"];

/// Prefixes (after `BERTH_`) left to the test tools: `BERTH_TEST_*` (the conformance suite),
/// `BERTH_V2_*` (scripts/v2-guest.sh, `BERTH_V2_LANE` of scripts/test.sh) and `BERTH_FRESH_*`
/// (scripts/fresh-tree.sh). No config key starts with these, so a tool's variable in the
/// environment never stops a daemon as an unknown key.
const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["TEST_", "V2_", "FRESH_"];

fn comment_for(key: &str) -> Option<&'static str> {
    let generic = if key.starts_with("runtime.handlers.") && !key.ends_with(".path") && !key.ends_with(".root") {
        Some("one runc-compatible OCI runtime (CRI runtime_handler)")
    } else if key.starts_with("image.registries.") && !key.ends_with("mirrors") && !key.ends_with("mirrors_only") {
        Some("settings for one registry host")
    } else {
        None
    };
    let base = key.rsplit('.').next().unwrap_or(key);
    Some(match key {
        "listen" => "CRI socket (unix, mode 0660)",
        "root" => "persistent state: metadata store, images, layers, writable layers",
        "run_root" => "volatile state: bundles, monitor sockets, exit files, mounts",
        "netns_dir" => "where pinned pod network namespaces are bind-mounted",
        "log_level" => "tracing filter for the daemon log",
        "log_format" => "daemon log format on stderr: text or json",
        "monitor_path" => "berth-monitor binary; empty = next to the berth binary",
        "cgroup_manager" => "cgroup driver: cgroupfs or systemd (kubelet's cgroupDriver must match)",
        "cgroup_parent" => "cgroup parent for pods that give none: a path (cgroupfs) or a slice (systemd)",
        "pod_stop_timeout" => "seconds StopPodSandbox waits for each container before SIGKILL",
        "log_size_max" => "bytes per container log file; at the limit it starts over empty (0 = unlimited)",
        "runtime" => "OCI runtimes",
        "runtime.default_handler" => "handler used when a request names none",
        "runtime.hooks_dir" => "OCI hook file directories (oci-hooks(5)); a later directory's file masks an earlier one's",
        "runtime.drop_infra" => {
            "pods sharing no PID namespace and no user namespace run without an infra process (namespaces pinned to files)"
        }
        "network" => "CNI",
        "network.conf_dir" => "CNI network configs; the first in lexical order is the pod network",
        "network.plugin_dirs" => "directories searched for CNI plugin binaries",
        "network.cache_dir" => "libcni result cache",
        "network.default_network" => "network name to use; empty = first config in conf_dir",
        "image" => "registries",
        "image.insecure_registries" => "registries (host[:port]) reachable over plain HTTP",
        "streaming" => "exec/attach/port-forward HTTP server",
        "streaming.address" => "address to bind",
        "streaming.port" => "TCP port; 0 picks a free one",
        "streaming.tls_cert_file" => "PEM certificate chain for HTTPS; empty = plain HTTP",
        "streaming.tls_key_file" => "PEM private key of tls_cert_file",
        "metrics" => "Prometheus endpoint (GET /metrics, text format 0.0.4)",
        "metrics.enabled" => "serve the endpoint",
        "metrics.address" => "IP address to bind",
        "metrics.port" => "TCP port; 0 picks a free one",
        "nri" => "NRI plugins (the Node Resource Interface; see docs/nri.md)",
        "nri.enable" => "accept NRI plugins on socket_path",
        "nri.socket_path" => "the socket NRI plugins connect to",
        "nri.plugin_dir" => "plugins berth launches at start: executables named <index>-<name>",
        "nri.plugin_config_dir" => "their configuration files, <index>-<name>.conf or <name>.conf",
        "nri.registration_timeout_ms" => "milliseconds a connected plugin has to register",
        "nri.request_timeout_ms" => "milliseconds a plugin has to answer Configure or an event; a plugin that does not is dropped",
        "nri.sync_timeout_ms" => "milliseconds a new plugin has to answer Synchronize (creates of pods and containers wait meanwhile)",
        _ => {
            return generic.or(match base {
                "path" if key.starts_with("runtime.handlers.") => Some("runtime binary, looked up on PATH when not absolute"),
                "root" if key.starts_with("runtime.handlers.") => Some("runtime --root; empty = <run_root>/runtime/<handler>"),
                "mirrors" => Some("mirror URLs tried in order before the registry itself"),
                "mirrors_only" => Some("never fall back to the registry itself"),
                _ => None,
            })
        }
    })
}

fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_path_buf(), source }),
    };
    let mut files: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    Ok(files)
}

/// Deep merge: tables merge key by key, anything else in `overlay` replaces what `base` had.
fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn insert_path(t: &mut toml::Table, path: &[String], v: toml::Value) {
    if path.len() == 1 {
        t.insert(path[0].clone(), v);
        return;
    }
    let sub = t.entry(path[0].clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(sub) = sub {
        insert_path(sub, &path[1..], v);
    }
}

fn parse_env_value(s: &str) -> toml::Value {
    let doc = format!("v = {s}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(s.into())),
        Err(_) => toml::Value::String(s.into()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, env: Vec<(&str, &str)>) -> LoadOptions {
        LoadOptions {
            config_file: None,
            default_file: Some(dir.join("berth.toml")),
            dropin_dir: Some(dir.join("berth.d")),
            env: Some(env.into_iter().map(|(a, b)| (a.into(), b.into())).collect()),
        }
    }

    #[test]
    fn defaults_without_files() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&opts(d.path(), vec![])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, PathBuf::from("/run/berth/berth.sock"));
        assert_eq!(c.runtime.handlers["runc"].path, PathBuf::from("runc"));
    }

    #[test]
    fn dropins_in_lexical_order_then_env() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "root = \"/a\"\n[network]\nconf_dir = \"/n\"\n").unwrap();
        std::fs::create_dir(d.path().join("berth.d")).unwrap();
        std::fs::write(d.path().join("berth.d/20-b.toml"), "root = \"/c\"\n").unwrap();
        std::fs::write(d.path().join("berth.d/10-a.toml"), "root = \"/b\"\nrun_root = \"/r\"\n").unwrap();
        std::fs::write(d.path().join("berth.d/ignored.txt"), "nonsense").unwrap();
        let c = Config::load(&opts(d.path(), vec![("BERTH_RUN_ROOT", "/env"), ("BERTH_IMAGE__INSECURE_REGISTRIES", "[\"h:1\"]")])).unwrap();
        assert_eq!(c.root, PathBuf::from("/c"));
        assert_eq!(c.run_root, PathBuf::from("/env"));
        assert_eq!(c.network.conf_dir, PathBuf::from("/n"));
        assert_eq!(c.network.plugin_dirs.len(), 2, "untouched nested defaults survive a partial table");
        assert_eq!(c.image.insecure_registries, vec!["h:1".to_string()]);
    }

    #[test]
    fn cgroup_manager_picks_the_default_parent_and_checks_its_form() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&opts(d.path(), vec![("BERTH_CGROUP_MANAGER", "systemd")])).unwrap();
        assert_eq!((c.cgroup_driver(), c.cgroup_parent.as_str()), (crate::cgroups::Driver::Systemd, "berth.slice"));
        let e = Config::load(&opts(d.path(), vec![("BERTH_CGROUP_MANAGER", "systemd"), ("BERTH_CGROUP_PARENT", "/berth")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cgroup_parent") && e.contains("not a systemd slice"), "{e}");
        let e = Config::load(&opts(d.path(), vec![("BERTH_CGROUP_PARENT", "pods.slice")])).unwrap_err().to_string();
        assert!(e.contains("cgroup_parent") && e.contains("cgroupfs"), "{e}");
        let e = Config::load(&opts(d.path(), vec![("BERTH_CGROUP_MANAGER", "systemd-ish")])).unwrap_err().to_string();
        assert!(e.contains("cgroup_manager") && e.contains("\"cgroupfs\" or \"systemd\""), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("berth.d")).unwrap();
        let f = d.path().join("berth.d/10-x.toml");
        std::fs::write(&f, "[network]\nconf_dri = \"/x\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("10-x.toml") && e.contains("conf_dri"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "[streaming]\nport = \"eighty\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("berth.toml") && e.contains("port"), "{e}");
        let e = Config::load(&opts(d.path().join("nope").as_path(), vec![("BERTH_LISTN", "/x")])).unwrap_err().to_string();
        assert!(e.contains("BERTH_LISTN") && e.contains("listn"), "{e}");
    }

    #[test]
    fn test_tools_variables_are_not_config() {
        let d = tempfile::tempdir().unwrap();
        let tools = vec![
            ("BERTH_V2_LANE", "0"),
            ("BERTH_TEST_PYTHON", "/x"),
            ("BERTH_TEST_KEEP", "1"),
            ("BERTH_FRESH_ENV", "A=b"),
            ("BERTH_LOG", "debug"),
        ];
        let c = Config::load(&opts(d.path(), tools.clone())).unwrap();
        assert_eq!(c.listen, Config::default().listen);
        // A typo next to them is still an error.
        let mut typo = tools;
        typo.push(("BERTH_TEST", "1"));
        let e = Config::load(&opts(d.path(), typo)).unwrap_err().to_string();
        assert!(e.contains("BERTH_TEST") && e.contains("test"), "{e}");
    }

    #[test]
    fn explicit_file_replaces_defaults_and_dropins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("berth.d")).unwrap();
        std::fs::write(d.path().join("berth.d/10.toml"), "root = \"/dropin\"\n").unwrap();
        let f = d.path().join("only.toml");
        std::fs::write(&f, "root = \"/only\"\n").unwrap();
        let mut o = opts(d.path(), vec![]);
        o.config_file = Some(f);
        assert_eq!(Config::load(&o).unwrap().root, PathBuf::from("/only"));
        o.config_file = Some(d.path().join("missing.toml"));
        assert!(matches!(Config::load(&o), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn validation_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "[runtime]\ndefault_handler = \"crun\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("runtime.default_handler") && e.contains("crun"), "{e}");
        std::fs::write(d.path().join("berth.toml"), "[image.registries.\"registry.k8s.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("mirrors") && e.contains("http://"), "{e}");
    }

    #[test]
    fn log_size_max_is_zero_or_at_least_the_floor() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "log_size_max = 100\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("log_size_max") && e.contains("8192"), "{e}");
        let c = Config::load(&opts(d.path(), vec![("BERTH_LOG_SIZE_MAX", "65536")])).unwrap();
        assert_eq!(c.log_size_max, 65536);
    }

    #[test]
    fn streaming_tls_needs_both_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "[streaming]\ntls_cert_file = \"/etc/berth/cert.pem\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("tls_key_file"), "{e}");
        std::fs::write(d.path().join("berth.toml"), "[streaming]\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n").unwrap();
        assert!(Config::load(&opts(d.path(), vec![])).is_ok());
    }

    #[test]
    fn log_format_and_metrics_address_are_checked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("berth.toml"), "log_format = \"xml\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("log_format") && e.contains("json"), "{e}");
        std::fs::write(d.path().join("berth.toml"), "[metrics]\nenabled = true\naddress = \"localhost\"\n").unwrap();
        let e = Config::load(&opts(d.path(), vec![])).unwrap_err().to_string();
        assert!(e.contains("metrics.address"), "{e}");
        let c = Config::load(&opts(d.path(), vec![("BERTH_METRICS__ADDRESS", "::1"), ("BERTH_LOG_FORMAT", "json")])).unwrap();
        assert_eq!((c.metrics.address.as_str(), c.metrics.port, c.log_format.as_str()), ("::1", 9090, "json"));
    }

    #[test]
    fn commented_toml_round_trips() {
        let mut c = Config::default();
        c.image
            .registries
            .insert("registry.k8s.io".into(), RegistryConfig { mirrors: vec!["http://127.0.0.1:5000".into()], mirrors_only: false });
        let text = c.to_commented_toml();
        assert!(text.contains("# CRI socket"), "{text}");
        assert!(text.contains("# mirror URLs"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
