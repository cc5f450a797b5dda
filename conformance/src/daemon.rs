//! The daemon under test: berth (default), containerd (`CRI_TARGET=containerd`) or an external
//! endpoint (`BERTH_ENDPOINT=unix:///path.sock`, nothing started).
//!
//! Started daemons run as our children with their stderr in a log file in the temp dir, and are
//! stopped by PID (SIGTERM, then SIGKILL after 20 s).

use crate::client::{self, Clients};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which implementation is behind the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// berth started by the harness.
    Berth,
    /// containerd 1.6 started by the harness.
    Containerd,
    /// An endpoint given by `BERTH_ENDPOINT`; the harness owns nothing.
    External,
}

/// A daemon process (or an external endpoint) and how to start it again.
pub struct Daemon {
    /// What runs behind the socket.
    pub kind: TargetKind,
    /// The CRI unix socket.
    pub socket: PathBuf,
    /// The daemon's stderr/stdout log file (started daemons only).
    pub log: Option<PathBuf>,
    program: PathBuf,
    args: Vec<String>,
    /// Extra environment of the started daemon (from the next start on).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Where the berth binary is: `$BERTH_BIN`, else `<target dir>/debug/berth` of this workspace.
pub fn berth_binary() -> PathBuf {
    if let Ok(b) = std::env::var("BERTH_BIN") {
        return b.into();
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| ws.join("target"));
    target.join("debug").join("berth")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for berth's metrics endpoint, which
/// the metrics cases scrape; they read the port back from `<tmp>/berth.toml`).
fn free_loopback_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The error message of the `broken` runtime handler in berth's test config.
pub const BROKEN_RUNTIME_MESSAGE: &str = "this runtime cannot create containers on any host";
/// crun, configured as handler `crun` when installed.
pub const CRUN: &str = "/usr/bin/crun";

/// berth's NRI socket in the suite's temp dir (the NRI cases and critest's NRI specs connect
/// their plugins to it).
pub fn nri_socket(tmp: &Path) -> PathBuf {
    tmp.join("nri.sock")
}

/// Writes berth's config (`<tmp>/berth.toml`) and returns its path.
/// Keys follow src/config.rs: listen, root, run_root, log_level, network.*, image.*, metrics.*,
/// nri.* (NRI on, on [`nri_socket`]).
pub fn write_berth_config(tmp: &Path, cni_dir: &Path, registry: &str) -> Result<PathBuf> {
    write_berth_config_with(tmp, cni_dir, registry, Handlers::Test)
}

/// Which runtime handlers a berth test config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handlers {
    /// runc (the default), a `broken` runtime, and crun when installed: what the suite checks
    /// the handler self-test with (berth logs a warning for each one that cannot run).
    Test,
    /// runc alone, as a node would run (kubelet-check: no warnings to explain).
    RuncOnly,
}

/// [`write_berth_config`] with the runtime handlers chosen.
pub fn write_berth_config_with(tmp: &Path, cni_dir: &Path, registry: &str, which: Handlers) -> Result<PathBuf> {
    let p = |x: &str| tmp.join(x).display().to_string();
    // Runtime handlers: runc (the default), a runtime that cannot create anything (the
    // self-test must report it), and crun when installed (works or is reported, depending on
    // the host's cgroups).
    let broken = tmp.join("broken-runtime");
    // `--root R <command> ...`: every command fails; delete says there is nothing, as runc does.
    std::fs::write(
        &broken,
        format!(
            "#!/bin/sh\ncase \"$3\" in delete) echo 'level=error msg=\"container does not exist\"' >&2;; *) echo 'level=error msg=\"{BROKEN_RUNTIME_MESSAGE}\"' >&2;; esac\nexit 1\n"
        ),
    )?;
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // OCI hook files: the hooks cases write theirs here (cases/hooks.rs).
    let mut handlers = format!(
        "[runtime]\ndefault_handler = \"runc\"\nhooks_dir = [\"{}\"]\n\n[runtime.handlers.runc]\npath = \"runc\"\n",
        crate::cases::hooks::hooks_dir(tmp).display()
    );
    if which == Handlers::Test {
        handlers.push_str(&format!("\n[runtime.handlers.broken]\npath = \"{}\"\n", broken.display()));
    }
    if which == Handlers::Test && Path::new(CRUN).exists() {
        handlers.push_str(&format!("\n[runtime.handlers.crun]\npath = \"{CRUN}\"\n"));
    }
    let text = format!(
        r#"listen = "{sock}"
root = "{root}"
run_root = "{run}"
log_level = "debug"
{cgroups}
[network]
conf_dir = "{cni}"
cache_dir = "{cache}"
plugin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]

[image]
insecure_registries = ["{registry}"]

[image.registries."registry.k8s.io"]
mirrors = ["http://{registry}"]
mirrors_only = true

[metrics]
enabled = true
address = "127.0.0.1"
port = {metrics_port}

[nri]
enable = true
socket_path = "{nri}"
plugin_dir = "{nri_plugins}"
plugin_config_dir = "{nri_conf}"

{handlers}"#,
        sock = p("berth.sock"),
        root = p("root"),
        run = p("run"),
        cni = cni_dir.display(),
        cache = p("cni-cache"),
        metrics_port = free_loopback_port()?,
        nri = nri_socket(tmp).display(),
        nri_plugins = p("nri-plugins"),
        nri_conf = p("nri-conf.d"),
        cgroups = crate::cgroups::config_lines(),
    );
    let path = tmp.join("berth.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Writes containerd's config and `certs.d` host files; returns the config path.
/// `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here), `sandbox_image` from the local registry,
/// registry hosts through `config_path` (the registry itself and registry.k8s.io -> local).
pub fn write_containerd_config(tmp: &Path, cni_dir: &Path, registry: &str, pause: &str) -> Result<PathBuf> {
    let certs = tmp.join("certs.d");
    for host in [registry, "registry.k8s.io"] {
        let d = certs.join(host);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
            ),
        )?;
    }
    let ctd = tmp.join("containerd");
    let text = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        root = ctd.join("root").display(),
        state = ctd.join("state").display(),
        sock = tmp.join("containerd.sock").display(),
        cni = cni_dir.display(),
        certs = certs.display(),
    );
    let path = tmp.join("containerd.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

impl Daemon {
    /// An endpoint we do not own.
    pub fn external(endpoint: &str) -> Daemon {
        Daemon {
            kind: TargetKind::External,
            socket: client::socket_path(endpoint),
            log: None,
            program: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            child: None,
        }
    }

    /// A daemon the harness starts: `program args...`, logging to `log`, serving `socket`.
    pub fn owned(kind: TargetKind, program: PathBuf, args: Vec<String>, socket: PathBuf, log: PathBuf) -> Daemon {
        Daemon { kind, socket, log: Some(log), program, args, env: Vec::new(), child: None }
    }

    /// True when the harness started (and so may restart) the daemon.
    pub fn owned_by_us(&self) -> bool {
        self.kind != TargetKind::External
    }

    /// Runs `program` from the next start on (same arguments); returns the one it replaces.
    pub fn set_program(&mut self, program: PathBuf) -> PathBuf {
        std::mem::replace(&mut self.program, program)
    }

    /// PID of the running daemon we started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the daemon (no-op for an external endpoint) and waits until Version answers.
    pub async fn start(&mut self) -> Result<Clients> {
        if self.owned_by_us() {
            let _ = std::fs::remove_file(&self.socket);
            let log_path = self.log.clone().context("owned daemon has a log path")?;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
            let child = Command::new(&self.program)
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", self.program.display()))?;
            self.child = Some(child);
        }
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<Clients> {
        let deadline = Instant::now() + limit;
        let mut last: String;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!("{} exited during start-up with {st}; log tail:\n{}", self.program.display(), self.log_tail(30));
                }
            }
            if self.socket.exists() {
                match client::connect(&self.socket).await {
                    Ok(mut c) => match c.rt.version(berth::cri::v1::VersionRequest { version: "v1".into() }).await {
                        Ok(_) => return Ok(c),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            } else {
                last = format!("socket {} does not exist yet", self.socket.display());
            }
            if Instant::now() > deadline {
                bail!("CRI endpoint {} not ready within {limit:?}: {last}; log tail:\n{}", self.socket.display(), self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the daemon we started: SIGTERM by PID, wait 20 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::proc::terminate_child(&mut c, Duration::from_secs(20));
        }
    }

    /// Kills the daemon we started with SIGKILL (by PID) and reaps it: a crash, with no chance
    /// to flush or clean up anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::proc::signal_pid(c.id() as i32, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Stops and starts the daemon again on the same root and socket.
    pub async fn restart(&mut self) -> Result<Clients> {
        if !self.owned_by_us() {
            bail!("cannot restart an external endpoint");
        }
        self.stop();
        self.start().await
    }

    /// The last `n` lines of the daemon's log (empty for external endpoints).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(p) = &self.log else { return String::new() };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
