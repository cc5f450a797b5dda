//! `berth`: the CRI daemon and its small CLI.
//!
//! - `berth serve [--config FILE] [flags]`: serve CRI on the configured unix socket.
//! - `berth config [--config FILE]`: print the effective configuration as commented TOML.
//! - `berth version`: print the version.
//! - `berth status [--config FILE] [--endpoint PATH]`: ask a running daemon for its CRI Status.
//! - `berth status [--config FILE] [--inspect-socket PATH] [container|pod] ID`: print the
//!   daemon's view of a container or pod sandbox (JSON from the inspect socket, see
//!   `berth::inspect`); without `container`/`pod`, a container is looked for first, then a pod.
//! - `berth image import [--config FILE] [--inspect-socket PATH] ARCHIVE...`: load
//!   docker-archive or OCI image layout tarballs (`-` for stdin) into the image store, through
//!   the running daemon's inspect socket, or directly into the store at the configured root
//!   when no daemon answers there (see `berth::image::import`).

use anyhow::Context;
use berth::config::{Config, LoadOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "berth", version, about = "A Kubernetes CRI runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (RuntimeService and ImageService) on a unix socket.
    Serve(ServeArgs),
    /// Print the effective configuration as commented TOML.
    Config(ConfigArgs),
    /// Print the version of berth and of the CRI it serves.
    Version,
    /// Ask a running berth for its CRI Status (RuntimeReady, NetworkReady), or with an ID for
    /// its view of a container or pod sandbox (config, state, pids, bundle, log, cgroup, netns).
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// The CRI socket (default: the configured `listen`).
        #[arg(long)]
        endpoint: Option<PathBuf>,
        /// The inspect socket (default: `<run_root>/inspect.sock` of the configuration).
        #[arg(long)]
        inspect_socket: Option<PathBuf>,
        /// `[container|pod] ID`: an ID or unique ID prefix, optionally preceded by its kind.
        #[arg(num_args = 0..=2, value_name = "[container|pod] ID")]
        object: Vec<String>,
    },
    /// Manage the image store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import docker-archive (`docker save`) or OCI image layout tarballs, gzip'd or not, with
    /// every image and tag they hold. Goes through the running daemon (its inspect socket) when
    /// one answers, else opens the store at the configured root itself (daemon stopped).
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        /// The inspect socket (default: `<run_root>/inspect.sock` of the configuration).
        #[arg(long)]
        inspect_socket: Option<PathBuf>,
        /// Archive files; `-` reads one from stdin.
        #[arg(required = true, value_name = "ARCHIVE")]
        archives: Vec<String>,
    },
    /// Export images (with all their names) as one docker-archive tarball, which `berth image
    /// import`, `docker load` and `ctr images import` read. Layers are written from their
    /// unpacked directories; see docs/operations.md for when that changes an image's ID.
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        /// The inspect socket (default: `<run_root>/inspect.sock` of the configuration).
        #[arg(long)]
        inspect_socket: Option<PathBuf>,
        /// The archive to write (replaced whole, or left as it was on failure).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Images: tags, IDs or unique ID prefixes.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Read only this file (no /etc/berth/berth.toml, no drop-ins).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// CRI socket path (overrides `listen`).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `run_root`).
    #[arg(long)]
    run_root: Option<PathBuf>,
    /// Log filter (overrides `log_level`), e.g. `debug` or `berth=debug,info`.
    #[arg(long)]
    log_level: Option<String>,
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(Config::load(&LoadOptions { config_file: args.config.clone(), ..Default::default() })?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(args) => {
            print!("{}", load(&args)?.to_commented_toml());
            Ok(())
        }
        Command::Version => {
            println!("berth {}\nCRI {}", env!("CARGO_PKG_VERSION"), berth::server::runtime::RUNTIME_API_VERSION);
            Ok(())
        }
        Command::Status { config, endpoint: _, inspect_socket, object } if !object.is_empty() => {
            let socket = match inspect_socket {
                Some(p) => p,
                None => berth::inspect::socket_path(&load(&config)?.run_root),
            };
            inspect(&socket, &object)
        }
        Command::Status { config, endpoint, .. } => {
            let socket = match endpoint {
                Some(p) => p,
                None => load(&config)?.listen,
            };
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(status(socket))
        }
        Command::Image { command: ImageCommand::Import { config, inspect_socket, archives } } => {
            let config = load(&config)?;
            let socket = inspect_socket.unwrap_or_else(|| berth::inspect::socket_path(&config.run_root));
            import(&config, &socket, &archives)
        }
        Command::Image { command: ImageCommand::Export { config, inspect_socket, output, images } } => {
            let config = load(&config)?;
            let socket = inspect_socket.unwrap_or_else(|| berth::inspect::socket_path(&config.run_root));
            export(&config, &socket, &output, &images)
        }
    }
}

type Archive = (Box<dyn std::io::Read + Send>, Option<u64>);

/// Opens `name` (`-` is stdin): the reader and its length when known.
fn open_archive(name: &str) -> anyhow::Result<Archive> {
    if name == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = std::fs::File::open(name).with_context(|| format!("opening archive {name}"))?;
    let len = f.metadata().with_context(|| format!("archive {name}"))?.len();
    Ok((Box::new(f), Some(len)))
}

fn print_imported(name: &str, id: &str, tags: &[String]) {
    let tags = if tags.is_empty() { "(no name)".to_string() } else { tags.join(" ") };
    println!("{name}: imported {id} {tags}");
}

/// `berth image import`: through the daemon when its inspect socket answers, else directly.
fn import(config: &Config, socket: &std::path::Path, archives: &[String]) -> anyhow::Result<()> {
    if archives.iter().filter(|a| *a == "-").count() > 1 {
        anyhow::bail!("berth image import: `-` (stdin) may be given once");
    }
    let no_daemon = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => None,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Some(e),
        Err(e) => return Err(anyhow::anyhow!("inspect socket {}: {e}", socket.display())),
    };
    let Some(why) = no_daemon else {
        for name in archives {
            let (mut reader, len) = open_archive(name)?;
            let (code, body) = berth::inspect::post_stream(
                socket,
                berth::inspect::IMPORT_PATH,
                &[(berth::inspect::ARCHIVE_NAME_HEADER, name)],
                &mut reader,
                len,
            )
            .with_context(|| format!("importing {name} through the daemon"))?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!({ "error": body.trim() }));
            if code != 200 {
                let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or_else(|| v.to_string());
                anyhow::bail!("berth image import {name}: the daemon refused it (HTTP {code}): {msg}");
            }
            let images: Vec<berth::inspect::ImportedImage> = serde_json::from_value(v.get("images").cloned().unwrap_or_default())
                .with_context(|| format!("{name}: the daemon's answer {body:?}"))?;
            for i in images {
                print_imported(name, &i.id, &i.repo_tags);
            }
        }
        return Ok(());
    };
    // No daemon: open the store ourselves (redb's file lock keeps a daemon out meanwhile).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let store = match berth::state::Store::open(&config.root) {
        Ok(s) => Arc::new(s),
        Err(e) if e.to_string().contains("already open") => anyhow::bail!(
            "no berth daemon answers on {} ({why}), and the store at {} is locked by another process \
             (a berth daemon whose run_root differs, or another `berth image import`): {e}",
            socket.display(),
            config.root.display()
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("no berth daemon answers on {} ({why}); opening the store", socket.display())))
        }
    };
    eprintln!(
        "berth image import: no daemon answers on {} ({why}); importing into the store at {} directly",
        socket.display(),
        config.root.display()
    );
    let images =
        berth::image::ImageStore::open(config.root.join("images"), store, config.image.clone()).context("opening the image store")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for name in archives {
        let (reader, _) = open_archive(name)?;
        let source = if name == "-" { "-" } else { name.as_str() };
        let imported = rt.block_on(images.import(reader, source)).with_context(|| format!("berth image import {name}"))?;
        for i in imported {
            print_imported(name, &i.id, &i.repo_tags);
        }
    }
    Ok(())
}

/// `berth image export`: through the daemon when its inspect socket answers (the daemon writes
/// the file), else straight from the store.
fn export(config: &Config, socket: &std::path::Path, output: &std::path::Path, images: &[String]) -> anyhow::Result<()> {
    let output = std::path::absolute(output).with_context(|| format!("output {}", output.display()))?;
    let print = |exported: &[berth::image::export::ExportedImage]| {
        for i in exported {
            let renamed = if i.id == i.source_id { String::new() } else { format!(" (in the store: {})", i.source_id) };
            println!("{}: exported {}{renamed} {}", output.display(), i.id, i.repo_tags.join(" "));
        }
    };
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {
            let req = berth::inspect::ExportRequest { images: images.to_vec(), output: output.clone() };
            let body = serde_json::to_vec(&req)?;
            let (code, answer) =
                berth::inspect::post_stream(socket, berth::inspect::EXPORT_PATH, &[], &mut &body[..], Some(body.len() as u64))
                    .context("exporting through the daemon")?;
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|_| serde_json::json!({ "error": answer.trim() }));
            if code != 200 {
                let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or_else(|| v.to_string());
                anyhow::bail!("berth image export: the daemon refused (HTTP {code}): {msg}");
            }
            let exported: Vec<berth::image::export::ExportedImage> = serde_json::from_value(v.get("images").cloned().unwrap_or_default())
                .with_context(|| format!("the daemon's answer {answer:?}"))?;
            print(&exported);
            Ok(())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            let store = Arc::new(berth::state::Store::open(&config.root).with_context(|| {
                format!("no berth daemon answers on {} ({e}); opening the store at {}", socket.display(), config.root.display())
            })?);
            let store = berth::image::ImageStore::open(config.root.join("images"), store, config.image.clone())
                .context("opening the image store")?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let exported = rt.block_on(store.export_to_file(images, &output)).context("berth image export")?;
            print(&exported);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("inspect socket {}: {e}", socket.display())),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before any thread exists: at most two malloc arenas (see berth::heap).
    berth::heap::limit_arenas();
    // Before any thread or child exists: no child may inherit NOTIFY_SOCKET (see sdnotify).
    let notifier = berth::sdnotify::Notifier::from_env();
    let mut config = load(&args.config)?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.root {
        config.root = v;
    }
    if let Some(v) = args.run_root {
        config.run_root = v;
    }
    if let Some(v) = args.log_level {
        config.log_level = v;
    }
    config.validate()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .with_context(|| format!("log_level {:?}", config.log_level))?;
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format.as_str() {
        // One JSON object per line: timestamp, level, fields, target, and the rpc span.
        "json" => fmt.json().with_current_span(true).with_span_list(false).init(),
        _ => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }

    // In a chroot, exec would land outside every container (see berth::chroot): refuse to serve.
    match berth::chroot::in_chroot() {
        Ok(true) => anyhow::bail!(berth::chroot::IN_CHROOT_MESSAGE),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "if berth runs in a chroot, exec in containers and user namespaces will not work"),
    }

    // In a container of its own (kind node, dind style) with the cgroupfs driver on cgroup v2:
    // make the namespace's root cgroup able to give pods controllers (cgroups::nest).
    if config.cgroup_driver() == berth::cgroups::Driver::Cgroupfs {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        match berth::cgroups::nest::delegate_if_nested(std::path::Path::new("/sys/fs/cgroup"), &own) {
            Ok(berth::cgroups::nest::Nesting::Delegated { moved, enabled, failed }) => {
                tracing::info!(moved, ?enabled, "nested cgroup v2: moved the root cgroup's processes to /init and enabled controllers");
                if !failed.is_empty() {
                    tracing::warn!(?failed, "nested cgroup v2: some controllers could not be enabled; pods get no limits of theirs");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "nested cgroup v2: cannot delegate controllers; pods may get no resource limits"),
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = Arc::new(berth::state::Store::open(&config.root)?);
        let images = Arc::new(
            berth::image::ImageStore::open(config.root.join("images"), store.clone(), config.image.clone())
                .context("opening the image store")?,
        );
        let listen = config.listen.clone();
        let mut daemon = berth::daemon::Daemon::open(config, images, store)?;
        daemon.connect_systemd().await?;
        let daemon = Arc::new(daemon);
        daemon.handlers.start_self_tests();
        berth::sandbox::recover(&daemon).await.context("recovering pod sandboxes")?;
        berth::container::recover(&daemon).await.context("recovering containers")?;
        // The one exit path: every end recovery and later RPCs start waiting on is folded into
        // its record (and published as STOPPED) as it happens.
        berth::exits::start(&daemon);
        berth::nrihost::start(&daemon).context("opening the NRI socket ([nri] socket_path)")?;
        let backend = Arc::new(berth::container::streaming::StreamBackend::new(daemon.clone()));
        let streaming = berth::streaming::server::StreamingServer::start(&daemon.config.streaming, backend)
            .await
            .context("starting the streaming server ([streaming] address/port)")?;
        tracing::info!(address = %streaming.local_addr(), "streaming server (exec/attach/port-forward) listening");
        let inspect_socket = berth::inspect::socket_path(&daemon.config.run_root);
        berth::inspect::serve(daemon.clone(), &inspect_socket).await.context("starting the inspect endpoint")?;
        if let Some(addr) = berth::server::metrics_http::start(daemon.clone(), &daemon.config.metrics)
            .await
            .context("starting the metrics endpoint ([metrics] address/port)")?
        {
            tracing::info!(address = %addr, "metrics endpoint listening (GET /metrics)");
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down; containers keep running under their monitors");
        };
        let ready = move || match notifier.notify("READY=1\nSTATUS=serving CRI") {
            Ok(true) => tracing::info!("told systemd READY=1"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "sd_notify READY=1 failed"),
        };
        let after = daemon.clone();
        let store = daemon.store.clone();
        let served = berth::server::serve(daemon, streaming, &listen, shutdown, ready).await;
        // A self-test still running would leave its test container behind: let it finish.
        let finished = tokio::task::spawn_blocking(move || after.handlers.wait_self_tests(std::time::Duration::from_secs(15))).await;
        if !matches!(finished, Ok(true)) {
            tracing::warn!("a runtime handler self-test did not finish within 15 s; the next start deletes what it left");
        }
        // Lazy records (StartContainer's Running, CreateContainer's PIDs) go to disk now, so a
        // graceful stop leaves nothing for the next start's recovery to rebuild.
        if let Err(e) = store.flush() {
            tracing::warn!(error = %e, "writing the last records to disk; the next start rebuilds them");
        }
        // The CRI socket goes with the server; the inspect socket is ours to remove too.
        if let Err(e) = std::fs::remove_file(&inspect_socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, socket = %inspect_socket.display(), "removing the inspect socket");
            }
        }
        served
    })
}

/// `berth status [container|pod] ID`: GET /containers/ID (then /pods/ID when no kind is given
/// and no container matches) on the inspect socket; prints the JSON body.
fn inspect(socket: &std::path::Path, object: &[String]) -> anyhow::Result<()> {
    let (kinds, id): (&[&str], &str) = match object {
        [kind, id] if kind == "container" => (&["containers"], id),
        [kind, id] if kind == "pod" => (&["pods"], id),
        [kind, _] => anyhow::bail!("berth status {kind:?}: expected `container` or `pod` before the ID"),
        [id] => (&["containers", "pods"], id),
        _ => anyhow::bail!("berth status: expected [container|pod] ID"),
    };
    let mut last = (0, String::new());
    for kind in kinds {
        last = berth::inspect::query(socket, &format!("/{kind}/{id}"))?;
        if last.0 == 200 {
            print!("{}", last.1);
            return Ok(());
        }
        if last.0 != 404 {
            break;
        }
    }
    anyhow::bail!("berth status {id}: HTTP {}: {}", last.0, last.1.trim())
}

async fn status(socket: PathBuf) -> anyhow::Result<()> {
    use hyper_util::rt::TokioIo;
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut client = berth::cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
    let v = client.version(berth::cri::v1::VersionRequest::default()).await?.into_inner();
    println!("{} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version);
    let s = client.status(berth::cri::v1::StatusRequest { verbose: false }).await?.into_inner();
    for c in s.status.map(|s| s.conditions).unwrap_or_default() {
        println!(
            "{}: {}{}",
            c.r#type,
            c.status,
            if c.message.is_empty() { String::new() } else { format!(" ({}: {})", c.reason, c.message) }
        );
    }
    Ok(())
}
