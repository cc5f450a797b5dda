//! `node-image-check`: the kind-style node image of `deploy/node-image` built, started as kind
//! starts a node, and used (issue #13 item 4).
//!
//! Set-up, all under a temp dir `/tmp/berth-node-check-*`:
//! - the conformance registry with its test images, on this machine's 127.0.0.1;
//! - two docker-archives of the suite's busybox plus a marker layer: one preloaded into the
//!   image, one loaded later as `kind load` does;
//! - the image, built by `deploy/node-image/build.sh` with podman from the berth binaries this
//!   run tests (`BERTH_BIN`'s directory), tagged `localhost/berth-node-check:<pid>`;
//! - the node: `podman run --privileged --systemd=always` with kind's mounts, its
//!   `/run/containerd` bound to `<tmp>/cri` so that the CRI socket berth serves inside is
//!   reachable from here, and a berth.d drop-in naming the node's registry as insecure;
//! - the node's registry: the same registry storage served by a second `docker-registry` on the
//!   node's own 127.0.0.1 (started in the node's network namespace with nsenter), so image
//!   references are the same inside and out, and nothing listens beyond loopback.
//!
//! Checks, in order (steps.rs): systemd boots the node with no failed unit and berth serves at
//! containerd's socket path; the preloaded image is there; a pull, a pod with a container, exec
//! and the container's log; a container from the preloaded image; a `kind load`-style import
//! through `podman exec -i ... berth image import -`; `systemctl restart berth` with a container
//! running, which is still served afterwards; `berth image export` and `import` inside the node;
//! stop and remove leave no mount, network namespace or monitor behind in the node.
//!
//! Teardown removes the node with its `/var` volume, the image, both registries and the temp
//! dir. crictl is not packaged for Debian 12, so the CRI calls are this suite's (tonic) client;
//! the node's own tools are used through `podman exec` (`berth status`, `berth image ...`,
//! systemctl, journalctl).
//!
//! Usage (as root, podman installed): `node-image-check [--image TAG] [--kubelet PATH] [--keep]`.
//! `--image` skips the build and uses TAG (the preload check then fails unless TAG was built with
//! this run's archive, so it is for iterating on the other steps). `--kubelet PATH` (or
//! `KUBELET`) builds that kubelet into the image (`build.sh --kubernetes`) and adds a step: the
//! node's kubelet.service runs a static pod on berth. Closing line: `N passed, N failed`.

use anyhow::{bail, Context, Result};
use berth_conformance::cases::import::docker_archive;
use berth_conformance::client::Clients;
use berth_conformance::daemon::berth_binary;
pub use berth_conformance::harness::wait_for;
use berth_conformance::images;
use berth_conformance::proc;
use berth_conformance::registry::{self, Registry};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "node-image-check/node.rs"]
mod node;
#[path = "node-image-check/steps.rs"]
mod steps;

use node::{Node, RunOpts};

/// The image the preloaded archive names.
pub const PRELOADED: &str = "localhost/berth-preloaded:v1";
/// The image the `kind load`-style archive names.
pub const LOADED: &str = "localhost/berth-loaded:v1";

/// What the steps share.
pub struct Env {
    pub tmp: PathBuf,
    /// The image has a kubelet (`--kubelet`).
    pub kubelet: bool,
    pub node: Node,
    /// The CRI socket as seen from this machine (`<tmp>/cri/containerd.sock`).
    pub socket: PathBuf,
    /// Set by the first step once berth answers.
    pub cri: Option<Clients>,
    /// `127.0.0.1:PORT/busybox:latest`, served inside the node too.
    pub busybox: String,
    /// Image ID of [`PRELOADED`].
    pub preloaded_id: String,
    /// The `kind load` archive on this machine, and its image ID.
    pub loaded: (PathBuf, String),
    /// The pod and the long-running container the steps share.
    pub pod: Option<String>,
    pub container: Option<String>,
}

/// Command-line options.
struct Opts {
    /// `--image TAG`: use TAG instead of building one.
    image: Option<String>,
    /// `--kubelet PATH` (or `KUBELET`): built into the image; the kubelet step runs.
    kubelet: Option<PathBuf>,
    /// `--keep`: keep the temp dir.
    keep: bool,
}

const USAGE: &str = "usage: node-image-check [--image TAG] [--kubelet PATH] [--keep]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let known = ["--keep", "--image", "--kubelet"];
    if let Some(bad) = args.iter().find(|a| a.starts_with("--") && !known.contains(&a.as_str())) {
        eprintln!("node-image-check: unknown option {bad}; {USAGE}");
        std::process::exit(2);
    }
    let opts = Opts {
        image: value("--image"),
        kubelet: value("--kubelet").map(PathBuf::from).or_else(|| std::env::var_os("KUBELET").map(PathBuf::from)),
        keep: args.iter().any(|a| a == "--keep"),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("node-image-check: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(run(opts)));
}

/// What set-up made, for teardown.
struct Owned {
    tmp: PathBuf,
    keep: bool,
    registry: Option<Registry>,
    node_registry: Option<Child>,
    node: Option<String>,
    /// The image this run built (removed at the end); `None` with `--image`.
    built: Option<String>,
    /// Whether podman's default bridge existed before this run (else it is deleted at the end:
    /// its 10.88.0.0/16 holds the conformance suite's pod subnet).
    podman_bridge_existed: bool,
}

/// The bridge of podman's default CNI network.
const PODMAN_BRIDGE: &str = "cni-podman0";

async fn run(opts: Opts) -> i32 {
    let keep = opts.keep;
    let tmp = match tempfile::Builder::new().prefix("berth-node-check-").tempdir_in("/tmp") {
        Ok(t) => t.keep(),
        Err(e) => {
            println!("FAILED setup: temp dir: {e}");
            println!("0 passed, 1 failed");
            return 1;
        }
    };
    eprintln!("node-image-check: temp dir {}", tmp.display());
    let mut owned = Owned {
        tmp: tmp.clone(),
        keep,
        registry: None,
        node_registry: None,
        node: None,
        built: None,
        podman_bridge_existed: Path::new("/sys/class/net").join(PODMAN_BRIDGE).exists(),
    };
    let (passed, failed) = match set_up(&mut owned, opts).await {
        Ok(mut env) => steps::run_all(&mut env).await,
        Err(e) => {
            println!("FAILED setup: {e:#}");
            (0, 1)
        }
    };
    teardown(&mut owned);
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

async fn set_up(o: &mut Owned, opts: Opts) -> Result<Env> {
    let kubelet = opts.kubelet;
    if Command::new("podman").arg("--version").stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
        bail!("podman not found: apt-get install podman (scripts/test.sh installs it)");
    }
    let reg = Registry::start(&o.tmp.join("registry"))?;
    let work = o.tmp.join("build");
    std::fs::create_dir_all(&work)?;
    let imgs = images::build_and_push(&reg, &work, false).context("build and push test images")?;
    let registry_addr = reg.addr.clone();
    o.registry = Some(reg);

    let (preload_bytes, preloaded_id) = docker_archive(&[PRELOADED])?;
    let preload = o.tmp.join("preload.tar");
    std::fs::write(&preload, preload_bytes)?;
    let (loaded_bytes, loaded_id) = docker_archive(&[LOADED])?;
    let loaded = o.tmp.join("loaded.tar");
    std::fs::write(&loaded, loaded_bytes)?;

    let tag = match opts.image {
        Some(t) => t,
        None => {
            let tag = format!("localhost/berth-node-check:{}", std::process::id());
            build_image(&o.tmp, &tag, &preload, kubelet.as_deref())?;
            o.built = Some(tag.clone());
            tag
        }
    };

    let cri_dir = o.tmp.join("cri");
    std::fs::create_dir_all(&cri_dir)?;
    let dropin = o.tmp.join("50-registry.toml");
    std::fs::write(
        &dropin,
        format!("# node-image-check: the node's registry on its own loopback\n[image]\ninsecure_registries = [\"{registry_addr}\"]\n"),
    )?;
    let name = format!("berth-node-check-{}", std::process::id());
    let opts = RunOpts { image: &tag, name: &name, cri_dir: &cri_dir, files: vec![(dropin, "/etc/berth/berth.d/50-registry.toml".into())] };
    o.node = Some(name.clone());
    let node = Node::start(&opts, &o.tmp.join("90-limits.conf"))?;
    o.node_registry = Some(start_node_registry(&o.tmp, node.pid, &registry_addr)?);
    Ok(Env {
        tmp: o.tmp.clone(),
        kubelet: kubelet.is_some(),
        node,
        socket: cri_dir.join("containerd.sock"),
        cri: None,
        busybox: imgs.busybox,
        preloaded_id,
        loaded: (loaded, loaded_id),
        pod: None,
        container: None,
    })
}

/// `deploy/node-image/build.sh` with this run's berth binaries and the preload archive.
fn build_image(tmp: &Path, tag: &str, preload: &Path, kubelet: Option<&Path>) -> Result<()> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace dir")?.to_path_buf();
    let bin = berth_binary();
    let bin_dir = bin.parent().context("berth binary's directory")?;
    let log = tmp.join("build.log");
    let out = std::fs::File::create(&log)?;
    let mut extra = Vec::new();
    if let Some(k) = kubelet {
        // build.sh takes a directory holding `kubelet`.
        let dir = tmp.join("kubernetes");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(k, dir.join("kubelet")).with_context(|| format!("copy kubelet {}", k.display()))?;
        extra = vec!["--kubernetes".to_string(), dir.display().to_string()];
    }
    eprintln!("  building {tag} (deploy/node-image/build.sh, berth from {}); log {}", bin_dir.display(), log.display());
    let start = Instant::now();
    let status = Command::new("bash")
        .arg(ws.join("deploy/node-image/build.sh"))
        .args(["--tag", tag, "--bin-dir"])
        .arg(bin_dir)
        .arg("--preload")
        .arg(preload)
        .args(&extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running deploy/node-image/build.sh")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!("build.sh exited with {status}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    eprintln!("  built {tag} in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// A second `docker-registry` on the node's 127.0.0.1 (same port, same storage as the one here),
/// started in the node's network namespace. Waits (30 s max) until it accepts a connection.
fn start_node_registry(tmp: &Path, pid: u32, addr: &str) -> Result<Child> {
    let cfg = tmp.join("node-registry.yml");
    registry::write_config(&cfg, &tmp.join("registry").join("storage"), addr)?;
    let nsenter = ["nsenter".to_string(), format!("--net=/proc/{pid}/ns/net")];
    let mut child =
        registry::spawn_serve(&nsenter, &cfg, &tmp.join("node-registry.log")).context("docker-registry in the node's network namespace")?;
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // bash's /dev/tcp, run in the node: the registry answers on the node's loopback.
        let probe = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
            .stderr(Stdio::null())
            .status();
        if matches!(probe, Ok(s) if s.success()) {
            return Ok(child);
        }
        if let Some(st) = child.try_wait()? {
            bail!("the node's docker-registry exited with {st}; see {}", tmp.join("node-registry.log").display());
        }
        if Instant::now() > deadline {
            proc::terminate_child(&mut child, Duration::from_secs(5));
            bail!("the node's docker-registry did not accept a connection on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn teardown(o: &mut Owned) {
    if let Some(child) = o.node_registry.as_mut() {
        proc::terminate_child(child, Duration::from_secs(5));
    }
    if let Some(name) = o.node.take() {
        let n = Node { name, pid: 0 };
        if let Err(e) = n.remove() {
            eprintln!("teardown: {e:#}");
        }
    }
    if let Some(tag) = o.built.take() {
        if let Err(e) = node::podman(&["rmi", "--force", &tag]) {
            eprintln!("teardown: {e:#}");
        }
    }
    if let Some(mut r) = o.registry.take() {
        r.stop();
    }
    if !o.podman_bridge_existed && Path::new("/sys/class/net").join(PODMAN_BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "del", PODMAN_BRIDGE]).stdout(Stdio::null()).status();
    }
    if o.keep {
        eprintln!("--keep: keeping {}", o.tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&o.tmp) {
        eprintln!("teardown: cannot remove {}: {e}", o.tmp.display());
    }
}
