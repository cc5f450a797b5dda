//! RunPodSandbox: every step pushes its undo, so a failure halfway leaves nothing behind.

use super::{files, namespace_options, SandboxPaths, SandboxRecord, SandboxState};
use crate::cleanup::Cleanup;
use crate::cri::v1::{NamespaceMode, PodSandboxConfig, Protocol};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::monitor::MonitorSpec;
use crate::network::{AttachRequest, PortMapping};
use crate::spec::{self, SandboxContext};
use std::path::{Path, PathBuf};
use tracing::Instrument;

/// Creates and starts a pod sandbox; returns its ID.
///
/// Steps (each undone in reverse on failure): name reservation, store record (NotReady, with
/// the files its namespaces will be pinned at), state and bundle dirs, pinned netns (its `lo`
/// up), CNI ADD, hostname/hosts/resolv.conf, the pod's `/dev/shm` tmpfs, then either the pinned IPC
/// and UTS namespaces with the hostname and sysctls ([`super::pinns`], for a pod that shares no
/// PID namespace and has no user namespace) or the infra container through the monitor and
/// `runtime create`/`start`; then the record turns Ready.
///
/// Errors: InvalidArgument for a missing metadata field, a bad hostname or an unknown runtime
/// handler; AlreadyExists when name/namespace/uid/attempt is taken; Network, Monitor, Oci for the
/// step that failed.
pub async fn run(d: &Daemon, config: PodSandboxConfig, runtime_handler: &str) -> Result<String> {
    let meta = config.metadata.clone().ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    if meta.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "must not be empty"));
    }
    if meta.namespace.is_empty() {
        return Err(Error::invalid("config.metadata.namespace", "must not be empty"));
    }
    if meta.uid.is_empty() {
        return Err(Error::invalid("config.metadata.uid", "must not be empty (kubelet sends the pod's UID)"));
    }
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(Error::invalid(
            "config.log_directory",
            format!("{:?} must be an absolute path (container logs go under it)", config.log_directory),
        ));
    }
    super::sysctl::validate(&config)?;
    let userns = crate::spec::userns::for_pod(&config)?;
    let runtime = d.handlers.runtime_for_new_pod(runtime_handler)?;
    if userns.is_some() {
        check_userns_support(d, runtime_handler)?;
    }
    let ns = namespace_options(&config);
    let host_network = ns.network == NamespaceMode::Node as i32;
    let hostname = if !config.hostname.is_empty() {
        config.hostname.clone()
    } else if host_network {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        meta.name.chars().take(63).collect()
    };
    if !host_network {
        files::validate_hostname(&hostname).map_err(|m| Error::invalid("config.hostname", m))?;
    }
    let cgroup_parent = match config.linux.as_ref().map(|l| l.cgroup_parent.as_str()) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => d.config.cgroup_parent.clone(),
    };
    let cgroup_parent = crate::cgroups::normalize_parent(d.config.cgroup_driver(), &cgroup_parent)
        .map_err(|why| Error::invalid("config.linux.cgroup_parent", why))?;

    let id = crate::util::new_id();
    let name_key = SandboxRecord::name_key(&config);
    d.reserve_name("pod sandbox", &name_key, &id)?;
    let lock = d.lock_for(&id);
    let _guard = lock.lock().await;
    let _creating = d.creating(&id);
    let span = tracing::info_span!("run_pod_sandbox", sandbox = %id, pod = %meta.name, namespace = %meta.namespace);

    let paths = SandboxPaths::new(d, &id);
    let mut record = SandboxRecord {
        id: id.clone(),
        config: config.clone(),
        runtime_handler: runtime_handler.to_string(),
        state: SandboxState::NotReady,
        created_at: crate::util::now_nanos(),
        netns_path: (!host_network).then(|| d.config.netns_dir.join(netns_name(&id))),
        // Stored with the first record when the netns is made before anything else (all but
        // user-namespaced pods): a crash at any later step still gets its CNI DEL at Stop, and
        // RunPodSandbox saves a durable commit (see wire_network).
        network_attached: !host_network && userns.is_none(),
        ips: Vec::new(),
        infra_pid: 0,
        monitor_pid: 0,
        cgroup_parent: cgroup_parent.clone(),
        hostname: hostname.clone(),
        shm_mounted: false,
        stopped: false,
        pinned: super::pinns::wanted(&config, userns.is_some(), d.config.runtime.drop_infra)
            .then(|| super::pinns::planned(&paths.ns_dir, &id, &config)),
    };

    let mut undo = Cleanup::new();
    undo.push("release name", async { d.release_name(&name_key, &id) });
    let result = async {
        // The record goes in first, carrying the paths of everything about to be made, so that
        // a crash halfway leaves a NotReady sandbox whose Stop/Remove find and undo it all.
        d.records.put_sandbox(&record)?;
        undo.push("drop record", async {
            let _ = d.records.delete_sandbox(&id);
        });
        let made = if record.has_infra() { &paths.rootfs } else { &paths.bundle };
        for dir in [&paths.state, made] {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        undo.push("remove dirs", async {
            let _ = crate::util::remove_dir_all_idempotent(&paths.bundle);
            let _ = crate::util::remove_dir_all_idempotent(&paths.state);
        });

        // With a pod user namespace the runtime makes the netns (it must belong to that user
        // namespace); it is pinned and wired after `create`, below.
        if let (Some(netns), None) = (record.netns_path.clone(), userns.as_ref()) {
            wire_network(d, &mut undo, &mut record, netns, None).await?;
        }
        if userns.is_none() {
            write_pod_files(&paths, &record, host_network)?;
        }

        let host_ipc = namespace_options(&config).ipc == NamespaceMode::Node as i32;
        if !host_ipc {
            std::fs::create_dir_all(&paths.shm).map_err(Error::io(format!("creating {}", paths.shm.display())))?;
            crate::storage::mount_tmpfs(&paths.shm, "mode=1777,size=65536k")?;
            record.shm_mounted = true;
            let shm = paths.shm.clone();
            undo.push("unmount shm", async move {
                let _ = crate::storage::unmount(&shm);
            });
        }

        if let Some(pins) = record.pinned.clone() {
            // No infra process: the pod's namespaces are pinned to files (sandbox::pinns).
            let mut sysctls: Vec<(String, String)> =
                config.linux.as_ref().map(|l| l.sysctls.clone().into_iter().collect()).unwrap_or_default();
            sysctls.sort();
            let req = super::pinns::PinRequest { netns: record.netns_path.as_deref(), pins: &pins, hostname: &hostname, sysctls };
            let started = std::time::Instant::now();
            super::pinns::pin(&req)?;
            undo.push("unpin namespaces", async move {
                if let Err(e) = super::pinns::unpin(&pins) {
                    tracing::warn!(error = %e, "undo: unpinning the pod's namespaces");
                }
            });
            tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "pod namespaces pinned (no infra process)");
        } else {
            start_infra(d, &mut undo, &mut record, &paths, userns.as_ref(), host_network, runtime).await?;
        }
        // NRI plugins see the pod up but not yet Ready; a refusal undoes it all. Plugin
        // synchronization waits until the pod is stored Ready (see crate::nri).
        let _nri_sync = match &d.nri {
            Some(nri) => {
                let sync = nri.block_sync().await;
                nri.run_pod_sandbox(&crate::records::nri_pod(&record)).await?;
                Some(sync)
            }
            None => None,
        };
        record.state = SandboxState::Ready;
        d.records.put_sandbox(&record)?;
        Ok::<(), Error>(())
    }
    .instrument(span.clone())
    .await;

    let _enter = span.enter();
    match result {
        Ok(()) => {
            undo.commit();
            d.records.publish_sandbox(crate::records::ContainerEventKind::Created, &record);
            d.records.publish_sandbox(crate::records::ContainerEventKind::Started, &record);
            d.records.watch_sandbox(&record);
            tracing::info!(infra = record.has_infra(), "pod sandbox ready");
            Ok(id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "RunPodSandbox failed; undoing");
            drop(_enter);
            undo.run().instrument(span).await;
            d.drop_lock(&id);
            Err(e)
        }
    }
}

/// The infra container of a pod that needs one ([`super::pinns::wanted`] says which do not):
/// `berth-pause` in a bundle of its own, run through the monitor and `runtime create`/`start`,
/// pushing its undo. With a pod user namespace the pod's network is wired and its files written
/// here, after `create` (the runtime makes that netns). Sets the record's infra and monitor pids.
async fn start_infra<'a>(
    d: &'a Daemon,
    undo: &mut Cleanup<'a>,
    record: &mut SandboxRecord,
    paths: &'a SandboxPaths,
    userns: Option<&crate::spec::userns::PodUserns>,
    host_network: bool,
    runtime: &'a crate::oci::Runtime,
) -> Result<()> {
    let id = record.id.clone();
    let config = record.config.clone();
    let hostname = record.hostname.clone();
    let cgroup_parent = record.cgroup_parent.clone();
    link_or_copy(&d.pause_bin, &paths.rootfs.join("berth-pause"))?;
    // The mount points runc would otherwise make: in a pod user namespace its root cannot
    // create them in a rootfs the host's root owns.
    for dir in ["proc", "dev"] {
        let p = paths.rootfs.join(dir);
        std::fs::create_dir_all(&p).map_err(Error::io(format!("creating {}", p.display())))?;
    }
    let hostname_file = paths.hostname_file();
    let hosts_file = paths.hosts_file();
    let resolv_conf = paths.resolv_conf();
    let ctx = SandboxContext {
        sandbox_id: &id,
        config: &config,
        netns_path: record.netns_path.as_deref(),
        namespaces: spec::PodNamespaces::Infra(0),
        hostname: &hostname,
        hosts_file: &hosts_file,
        resolv_conf: &resolv_conf,
        hostname_file: &hostname_file,
        shm_path: record.shm_mounted.then_some(paths.shm.as_path()),
        cgroup_parent: &cgroup_parent,
        userns,
    };
    let infra = spec::infra_spec_with(&ctx, &paths.rootfs, &id, d.own_oom_score_adj)?;
    let config_json = paths.bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(&infra).map_err(|e| Error::io("encoding infra config.json")(e.into()))?;
    crate::util::write_atomic(&config_json, &bytes).map_err(Error::io(format!("writing {}", config_json.display())))?;

    let mspec = MonitorSpec {
        id: id.clone(),
        bundle: paths.bundle.clone(),
        runtime: runtime.path.clone(),
        runtime_root: runtime.root.clone(),
        systemd_cgroup: runtime.systemd_cgroup,
        log_path: None,
        exit_file: paths.exit_file.clone(),
        pid_file: paths.bundle.join("pidfile"),
        attach_socket: paths.bundle.join("attach"),
        terminal: false,
        stdin: false,
        stdin_once: false,
        log_size_max: 0,
    };
    let started = std::time::Instant::now();
    let spawned = crate::monitor::spawn(&d.monitor_bin, &mspec).await?;
    if let Some(sd) = &d.systemd {
        sd.place_monitor(&id, &cgroup_parent, spawned.monitor_pid).await;
    }
    let watched =
        crate::records::liveness::Watched { exit_file: &paths.exit_file, monitor_pid: spawned.monitor_pid, pid: spawned.container_pid };
    let infra_id = id.clone();
    undo.push("delete infra container", async move {
        let _ = runtime.kill(&infra_id, libc::SIGKILL, true).await;
        watched.wait(std::time::Duration::from_secs(10)).await;
        if let Err(e) = runtime.delete(&infra_id, true).await {
            tracing::warn!(error = %e, "undo: deleting infra container");
        }
    });
    if userns.is_some() {
        if let Some(netns) = record.netns_path.clone() {
            wire_network(d, undo, record, netns, Some(spawned.container_pid)).await?;
        }
        write_pod_files(paths, record, host_network)?;
    }
    runtime.start(&id).await?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, pid = spawned.container_pid, "infra container started");
    record.infra_pid = spawned.container_pid;
    record.monitor_pid = spawned.monitor_pid;
    Ok(())
}

/// Gives the pod its network: pins a new netns at `netns` (or, with `owner`, the netns of that
/// process, made by the runtime inside the pod's user namespace), then CNI ADD, pushing the undo
/// of each step. `network_attached` is stored before ADD (in the first record, or here), so a
/// crash during or after it still gets its DEL at Stop (a DEL of what was never added is fine
/// for CNI). The IPs go into the record in memory and are stored with the Ready record: a pod
/// that never became Ready needs only the CNI cache for its DEL. Each durable commit of the
/// store costs an fsync, and RunPodSandbox of a pod without an infra process makes two.
async fn wire_network<'a>(
    d: &'a Daemon,
    undo: &mut Cleanup<'a>,
    record: &mut SandboxRecord,
    netns: PathBuf,
    owner: Option<i32>,
) -> Result<()> {
    let name = netns_name(&record.id);
    match owner {
        None => crate::network::netns::create(&d.config.netns_dir, &name)?,
        Some(pid) => crate::network::netns::pin(&d.config.netns_dir, &name, pid)?,
    };
    let pinned = netns.clone();
    undo.push("remove netns", async move {
        if let Err(e) = crate::network::netns::remove(&pinned) {
            tracing::warn!(error = %e, "undo: removing netns");
        }
    });
    let req = attach_request(record, &netns);
    if !record.network_attached {
        record.network_attached = true;
        d.records.put_sandbox(record)?;
    }
    let started = std::time::Instant::now();
    let attached = d.cni.setup(&req).await?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, ips = ?attached.ips, "CNI ADD done");
    undo.push("CNI DEL", async move {
        if let Err(e) = d.cni.teardown(&req).await {
            tracing::warn!(error = %e, "undo: CNI DEL");
        }
    });
    record.ips = attached.ips.iter().map(|ip| ip.to_string()).collect();
    Ok(())
}

/// Name of the pinned netns file: `berth-<first 16 hex of the sandbox id>`.
pub(crate) fn netns_name(id: &str) -> String {
    format!("berth-{}", &id[..16.min(id.len())])
}

/// The CNI request for a sandbox (also used by StopPodSandbox for the DEL).
pub(crate) fn attach_request(r: &SandboxRecord, netns: &Path) -> AttachRequest {
    let m = r.config.metadata.clone().unwrap_or_default();
    AttachRequest {
        container_id: r.id.clone(),
        netns: netns.to_path_buf(),
        ifname: "eth0".into(),
        pod_name: m.name,
        pod_namespace: m.namespace,
        pod_uid: m.uid,
        port_mappings: r
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port as u16,
                container_port: p.container_port as u16,
                protocol: match Protocol::try_from(p.protocol) {
                    Ok(Protocol::Udp) => "udp",
                    Ok(Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .into(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
    }
}

fn write_pod_files(paths: &SandboxPaths, r: &SandboxRecord, host_network: bool) -> Result<()> {
    let write =
        |p: std::path::PathBuf, data: Vec<u8>| crate::util::write_atomic(&p, &data).map_err(Error::io(format!("writing {}", p.display())));
    write(paths.hostname_file(), format!("{}\n", r.hostname).into_bytes())?;
    let hosts = if host_network {
        std::fs::read("/etc/hosts").unwrap_or_else(|_| files::hosts_file(&r.hostname, &[]).into_bytes())
    } else {
        files::hosts_file(&r.hostname, &r.ips).into_bytes()
    };
    write(paths.hosts_file(), hosts)?;
    let resolv = match files::resolv_conf(r.config.dns_config.as_ref()) {
        Some(s) => s.into_bytes(),
        None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    write(paths.resolv_conf(), resolv)
}

/// Hard-links `src` to `dst` (both under the run root, so one filesystem), copying when the link
/// is refused.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(Error::io(format!("copying {} to {}", src.display(), dst.display())))?;
    }
    Ok(())
}

/// Checks that handler `handler` can run a pod with its own user namespace
/// ([`crate::daemon::Daemon::user_namespaces`]: runtime features, its self-test, the kernel).
/// Errors: FailedPrecondition naming the handler and what is missing.
fn check_userns_support(d: &crate::daemon::Daemon, handler: &str) -> Result<()> {
    d.handlers.user_namespaces(handler).map_err(|why| {
        Error::FailedPrecondition(format!(
            "runtime handler {handler:?} cannot run a pod with its own user namespace (userns_options mode POD): {why}"
        ))
    })
}
