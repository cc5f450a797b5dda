//! `critest-prep`: gets this machine ready for the upstream CRI conformance suite, critest
//! (cri-tools v1.36), against berth, with no internet.
//!
//! Set-up, all under a temp dir `/tmp/critest-prep-*`:
//! 1. the conformance registry (Debian's `docker-registry` on 127.0.0.1) holding every image
//!    critest v1.36 pulls, built from Debian's busybox and a few static programs (see
//!    `critest-prep/images.rs`); the digest-pinned `test-image-digest@sha256:9700f9...` cannot be
//!    made (upstream digest), so its spec is expected to fail;
//! 2. the conformance CNI network (bridge `brt0`, 10.88.77.0/24, portmap);
//! 3. berth (runc only) with `registry.k8s.io`, `gcr.io` and `k8s.gcr.io` mirrored to the local
//!    registry with `mirrors_only = true`.
//!
//! It holds the conformance lock (`/tmp/berth-conformance.lock`) the whole time, so it never
//! runs beside the suite or kubelet-check (they share `brt0`).
//!
//! Usage (as root; build first with `cargo build --workspace --bins`):
//! - `critest-prep`: prints `socket: PATH` and the critest command line, then serves until stdin
//!   closes (or `--until-signal`: until SIGTERM/SIGINT only), then tears down;
//! - `critest-prep --critest PATH [--out FILE] [-- ARGS...]`: also runs
//!   `PATH --runtime-endpoint unix://S --image-endpoint unix://S --ginkgo.v --ginkgo.no-color ARGS`
//!   with its output in FILE (default `<target>/critest-prep/critest.log`), berth's log copied
//!   beside it (`FILE.berth.log`), prints critest's summary and exits with its status.
//!
//! `--keep` keeps the temp dir. `BERTH_BIN` names the berth binary (default
//! `<target>/debug/berth`). Teardown: critest (if still running) and every pod on this berth are
//! stopped, berth and the registry stopped by PID, leftover processes naming the temp dir killed
//! by PID, mounts under it lazily unmounted, `brt0` deleted when this run made it, System V
//! shared memory segments critest's HostIpc specs made (`ipcmk`) removed, the temp dir removed.

use anyhow::{bail, Context, Result};
use berth_conformance::client::Clients;
use berth_conformance::daemon::{self, Daemon, Handlers, TargetKind};
use berth_conformance::harness::{self, BRIDGE, LOCK_FILE};
use berth_conformance::proc;
use berth_conformance::registry::Registry;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "critest-prep/images.rs"]
mod images;
#[path = "critest-prep/programs.rs"]
mod programs;

/// The signal that asked us to stop (0: none yet).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

struct Opts {
    critest: Option<PathBuf>,
    out: Option<PathBuf>,
    critest_args: Vec<String>,
    keep: bool,
    until_signal: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: critest-prep [--keep] [--until-signal]\n       critest-prep --critest PATH [--out FILE] [--keep] [-- CRITEST_ARGS...]"
    );
    std::process::exit(2);
}

fn parse_args() -> Opts {
    let mut o = Opts { critest: None, out: None, critest_args: Vec::new(), keep: false, until_signal: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--critest" => o.critest = Some(it.next().unwrap_or_else(|| usage()).into()),
            "--out" => o.out = Some(it.next().unwrap_or_else(|| usage()).into()),
            "--keep" => o.keep = true,
            "--until-signal" => o.until_signal = true,
            "--" => {
                o.critest_args = it.by_ref().collect();
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("critest-prep: unknown argument {other:?}");
                usage();
            }
        }
    }
    o
}

fn main() {
    let opts = parse_args();
    install_signal_handlers();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("critest-prep: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(run(opts)));
}

/// What this run made and must undo.
struct Owned {
    tmp: PathBuf,
    keep: bool,
    registry: Option<Registry>,
    berth: Option<Daemon>,
    critest: Option<Child>,
    bridge_existed: bool,
    shm_before: Option<BTreeSet<String>>,
    netns_before: BTreeSet<String>,
}

async fn run(opts: Opts) -> i32 {
    // One run at a time on this machine: the suite, kubelet-check and this share brt0.
    let _lock = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_FILE) {
        Ok(f) => {
            if f.try_lock().is_err() {
                eprintln!("critest-prep: waiting for another run to release {LOCK_FILE}");
                if let Err(e) = f.lock() {
                    eprintln!("critest-prep: cannot lock {LOCK_FILE}: {e}");
                    return 1;
                }
            }
            f
        }
        Err(e) => {
            eprintln!("critest-prep: cannot open {LOCK_FILE}: {e}");
            return 1;
        }
    };
    if SIGNALLED.load(Ordering::SeqCst) != 0 {
        return 1;
    }
    let tmp = match tempfile::Builder::new().prefix("critest-prep-").tempdir_in("/tmp") {
        Ok(t) => t.keep(),
        Err(e) => {
            eprintln!("critest-prep: temp dir: {e}");
            return 1;
        }
    };
    eprintln!("critest-prep: temp dir {}", tmp.display());
    let mut owned = Owned {
        tmp: tmp.clone(),
        keep: opts.keep,
        registry: None,
        berth: None,
        critest: None,
        bridge_existed: Path::new("/sys/class/net").join(BRIDGE).exists(),
        shm_before: None,
        netns_before: harness::netns_names(),
    };
    let code = match set_up(&mut owned).await {
        Ok(mut clients) => {
            let socket = owned.berth.as_ref().map(|d| d.socket.clone()).unwrap_or_default();
            let code = match &opts.critest {
                Some(bin) => run_critest(&mut owned, bin, &opts, &socket).await,
                None => {
                    serve(&socket, opts.until_signal).await;
                    0
                }
            };
            for e in harness::remove_all_pods(&mut clients).await {
                eprintln!("teardown: {e}");
            }
            code
        }
        Err(e) => {
            eprintln!("critest-prep: set-up failed: {e:#}");
            1
        }
    };
    if let (Some(out), Some(d)) = (opts.critest.as_ref().map(|_| out_path(&opts)), owned.berth.as_ref()) {
        if let Some(log) = &d.log {
            let dest = PathBuf::from(format!("{}.berth.log", out.display()));
            if std::fs::copy(log, &dest).is_ok() {
                eprintln!("critest-prep: berth's log copied to {}", dest.display());
            }
        }
    }
    teardown(&mut owned);
    code
}

async fn set_up(o: &mut Owned) -> Result<Clients> {
    let reg = Registry::start(&o.tmp.join("registry"))?;
    let work = o.tmp.join("build");
    std::fs::create_dir_all(&work)?;
    eprintln!("critest-prep: registry at {}; building and pushing images", reg.addr);
    let pushed = images::build_and_push(&reg, &work).context("build and push critest's images")?;
    for p in &pushed {
        eprintln!("  pushed {p}");
    }
    let addr = reg.addr.clone();
    o.registry = Some(reg);
    let cni = harness::write_cni_config(&o.tmp)?;
    let cfg = daemon::write_berth_config_with(&o.tmp, &cni, &addr, Handlers::RuncOnly)?;
    add_mirrors(&cfg, &addr)?;
    let bin = daemon::berth_binary();
    if !bin.exists() {
        bail!("berth binary {} does not exist: run `cargo build --workspace --bins` or set BERTH_BIN", bin.display());
    }
    let mut d = Daemon::owned(
        TargetKind::Berth,
        bin,
        vec!["serve".into(), "--config".into(), cfg.display().to_string()],
        o.tmp.join("berth.sock"),
        o.tmp.join("berth.log"),
    );
    let started = d.start().await;
    o.berth = Some(d);
    let clients = started.context("starting berth")?;
    Ok(clients)
}

/// Mirrors `gcr.io` and `k8s.gcr.io` to the local registry too (`registry.k8s.io` already is).
fn add_mirrors(cfg: &Path, registry: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(cfg)?;
    for host in ["gcr.io", "k8s.gcr.io"] {
        text.push_str(&format!("\n[image.registries.\"{host}\"]\nmirrors = [\"http://{registry}\"]\nmirrors_only = true\n"));
    }
    if !text.contains("[image.registries.\"registry.k8s.io\"]") {
        text.push_str(&format!("\n[image.registries.\"registry.k8s.io\"]\nmirrors = [\"http://{registry}\"]\nmirrors_only = true\n"));
    }
    std::fs::write(cfg, text)?;
    Ok(())
}

fn critest_command_line(bin: &str, socket: &Path, extra: &[String]) -> Vec<String> {
    let ep = format!("unix://{}", socket.display());
    // berth's config (daemon::write_berth_config_with) puts its NRI socket beside its CRI one;
    // critest v1.36's 13 NRI specs run against it.
    let nri = daemon::nri_socket(socket.parent().unwrap_or(Path::new("/tmp")));
    let mut v = vec![
        bin.to_string(),
        "--runtime-endpoint".into(),
        ep.clone(),
        "--image-endpoint".into(),
        ep,
        "--ginkgo.v".into(),
        "--ginkgo.no-color".into(),
        format!("-nri-socket={}", nri.display()),
    ];
    v.extend(extra.iter().cloned());
    v
}

/// Waits until stdin closes (unless `until_signal`) or a signal arrives.
async fn serve(socket: &Path, until_signal: bool) {
    println!("socket: {}", socket.display());
    println!("endpoint: unix://{}", socket.display());
    println!("critest: {}", critest_command_line("critest", socket, &[]).join(" "));
    if until_signal {
        println!("serving until SIGTERM/SIGINT");
    } else {
        println!("serving until stdin closes or SIGTERM/SIGINT");
    }
    let eof = Arc::new(AtomicBool::new(false));
    if !until_signal {
        let e = eof.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            e.store(true, Ordering::SeqCst);
        });
    }
    loop {
        if eof.load(Ordering::SeqCst) {
            eprintln!("critest-prep: stdin closed; tearing down");
            return;
        }
        let s = SIGNALLED.load(Ordering::SeqCst);
        if s != 0 {
            eprintln!("critest-prep: signal {s}; tearing down");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn out_path(opts: &Opts) -> PathBuf {
    opts.out.clone().unwrap_or_else(|| {
        let target = daemon::berth_binary().parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/tmp"));
        target.join("critest-prep").join("critest.log")
    })
}

/// Shared memory segment ids (`ipcs -m`), None when ipcs cannot run.
fn shm_ids() -> Option<BTreeSet<String>> {
    let out = Command::new("ipcs").arg("-m").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 2 && f[0].starts_with("0x") && f[1].chars().all(|c| c.is_ascii_digit())).then(|| f[1].to_string())
            })
            .collect(),
    )
}

/// Runs critest against `socket`, its output in the out file; returns its exit status.
async fn run_critest(o: &mut Owned, bin: &Path, opts: &Opts, socket: &Path) -> i32 {
    let out = out_path(opts);
    if let Some(d) = out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let file = match std::fs::File::create(&out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("critest-prep: cannot create {}: {e}", out.display());
            return 1;
        }
    };
    // critest's temp dirs (host paths, pod log dirs) under our temp dir: removed at teardown.
    let ctmp = o.tmp.join("critest-tmp");
    let _ = std::fs::create_dir_all(&ctmp);
    let argv = critest_command_line(&bin.display().to_string(), socket, &opts.critest_args);
    eprintln!("critest-prep: running {} > {}", argv.join(" "), out.display());
    o.shm_before = shm_ids();
    let stdout = match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("critest-prep: duplicating the descriptor of {}: {e}", out.display());
            return 1;
        }
    };
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("TMPDIR", &ctmp)
        .current_dir(&o.tmp)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(file)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("critest-prep: spawn {}: {e}", bin.display());
            return 1;
        }
    };
    eprintln!("critest-prep: critest pid {}", child.id());
    o.critest = Some(child);
    let status = loop {
        let s = SIGNALLED.load(Ordering::SeqCst);
        if s != 0 {
            eprintln!("critest-prep: signal {s}; stopping critest");
            if let Some(c) = o.critest.as_mut() {
                proc::terminate_child(c, Duration::from_secs(10));
            }
            break 1;
        }
        match o.critest.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => break st.code().unwrap_or(1),
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                eprintln!("critest-prep: wait for critest: {e}");
                break 1;
            }
            None => break 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    o.critest = None;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    for l in
        text.lines().filter(|l| l.starts_with("Ran ") || l.contains(" Passed | ") || l.starts_with("FAIL!") || l.starts_with("SUCCESS!"))
    {
        println!("{l}");
    }
    println!("critest exited with {status}; output in {}", out.display());
    status
}

fn teardown(o: &mut Owned) {
    if let Some(c) = o.critest.as_mut() {
        proc::terminate_child(c, Duration::from_secs(10));
    }
    if let Some(mut d) = o.berth.take() {
        d.stop();
    }
    if let Some(mut r) = o.registry.take() {
        r.stop();
    }
    // Anything still running that names our temp dir (container monitors) was started by us.
    harness::end_leftovers_under(&o.tmp);
    berth_conformance::cgroups::remove_parent();
    if !o.bridge_existed && Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stdout(Stdio::null()).status();
    }
    // Segments critest's HostIpc specs made with `ipcmk -M` (critest never removes them).
    if let (Some(before), Some(after)) = (o.shm_before.as_ref(), shm_ids()) {
        for id in after.difference(before) {
            eprintln!("teardown: removing shared memory segment {id} made during the critest run");
            let _ = Command::new("ipcrm").args(["-m", id]).status();
        }
    }
    let netns_after = harness::netns_names();
    for n in netns_after.difference(&o.netns_before) {
        eprintln!("teardown: note: /var/run/netns/{n} appeared during this run and is still there");
    }
    if o.keep {
        eprintln!("--keep: keeping {}", o.tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&o.tmp) {
        eprintln!("teardown: cannot remove {}: {e}", o.tmp.display());
    }
}
