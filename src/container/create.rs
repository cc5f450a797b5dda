//! CreateContainer: writable layer, overlay rootfs, OCI bundle, `runtime create` through the
//! monitor. Every step pushes its undo.

use super::{ContainerPaths, ContainerRecord, ContainerState};
use crate::cleanup::Cleanup;
use crate::cri::v1::{ContainerConfig, PodSandboxConfig};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::monitor::MonitorSpec;
use crate::records::{SandboxPaths, SandboxState};
use crate::spec::{self, ContainerContext, PodNamespaces, SandboxContext};
use std::path::{Component, Path, PathBuf};
use tracing::Instrument;

/// Creates a container in pod sandbox `sandbox_id`; returns its ID. The container is left in
/// CREATED state (its process waits in the runtime until [`super::start`]).
///
/// `sandbox_config` is the config kubelet passes along; berth uses the one it stored at
/// RunPodSandbox and ignores this one.
///
/// Errors: InvalidArgument (missing metadata name or image), NotFound (pod sandbox or image),
/// FailedPrecondition (pod not ready), AlreadyExists (name taken in this pod), Spec, Storage,
/// Monitor for the step that failed.
pub async fn create(d: &Daemon, sandbox_id: &str, config: ContainerConfig, _sandbox_config: Option<PodSandboxConfig>) -> Result<String> {
    let meta = config.metadata.clone().ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    if meta.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "must not be empty"));
    }
    let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    if image_name.is_empty() {
        return Err(Error::invalid("config.image.image", "must name an image"));
    }
    if Path::new(&config.log_path).is_absolute() || Path::new(&config.log_path).components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(
            "config.log_path",
            format!("{:?} must be a path relative to the pod's log_directory, without \"..\"", config.log_path),
        ));
    }
    let sandbox = d.records.sandbox(sandbox_id)?;
    if sandbox.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready", sandbox.id)));
    }
    let sc = config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
    let pod_privileged = sandbox.config.linux.as_ref().and_then(|l| l.security_context.as_ref()).is_some_and(|s| s.privileged);
    if sc.privileged && !pod_privileged {
        // containerd and CRI-O refuse this too; kubelet marks the pod privileged whenever one of
        // its containers is.
        return Err(Error::invalid(
            "config.linux.security_context.privileged",
            format!(
                "pod sandbox {} is not privileged (PodSandboxConfig.linux.security_context.privileged): \
                 a privileged container needs a privileged pod",
                sandbox.id
            ),
        ));
    }
    let pid_target = pid_target(d, &sandbox.id, &sc)?;
    let userns = crate::spec::userns::for_pod(&sandbox.config)?;
    crate::spec::userns::check_container(userns.as_ref(), sc.namespace_options.as_ref(), sc.privileged)?;
    let image = d.images.resolve(&image_name)?.ok_or_else(|| Error::NotFound { kind: "image", id: image_name.clone() })?;
    let stop_signal = super::signal::for_new_container(&config, &image.config.stop_signal)?;
    let volumes = super::imagevol::resolve(d, &config)?;

    let id = crate::util::new_id();
    let name_key = ContainerRecord::name_key(&config, &sandbox);
    d.reserve_name("container", &name_key, &id)?;
    let lock = d.lock_for(&id);
    let _guard = lock.lock().await;
    let span = tracing::info_span!("create_container", container = %id, sandbox = %sandbox.id, name = %meta.name);
    let runtime = d.runtime(&sandbox.runtime_handler)?;
    let paths = ContainerPaths::new(d, &id);
    let log_path = match (sandbox.config.log_directory.as_str(), config.log_path.as_str()) {
        ("", _) | (_, "") => String::new(),
        (dir, file) => PathBuf::from(dir).join(file).to_string_lossy().into_owned(),
    };
    let mut record = ContainerRecord {
        id: id.clone(),
        sandbox_id: sandbox.id.clone(),
        config: super::imagevol::with_image_refs(config.clone(), &volumes),
        image_id: image.id.clone(),
        image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
        runtime_handler: sandbox.runtime_handler.clone(),
        state: ContainerState::Created,
        created_at: crate::util::now_nanos(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        pid: 0,
        monitor_pid: 0,
        log_path: log_path.clone(),
        stop_signal,
        name_key: name_key.clone(),
        user: None,
    };

    let mut undo = Cleanup::new();
    undo.push("release name", async { d.release_name(&name_key, &id) });
    let result = async {
        let upper = paths.state.join("upper");
        let work = paths.state.join("work");
        for dir in [&upper, &work, &paths.rootfs] {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        undo.push("remove dirs", async {
            // Refused (and logged) while anything below is still mounted: never into a volume.
            for dir in [&paths.bundle, &paths.state] {
                if let Err(e) = crate::util::remove_dir_all_idempotent(dir) {
                    tracing::warn!(error = %e, "undo: keeping {}", dir.display());
                }
            }
        });
        // The lease keeps the layers while this container stacks them (its image's and its
        // image volumes'), even if an image is removed meanwhile.
        let mut leased: Vec<&crate::image::Image> = vec![&image];
        leased.extend(volumes.iter().map(|(_, i)| i));
        let mut dirs = d.images.lease_images(&id, &leased).await?.into_iter();
        let layers = dirs.next().unwrap_or_default();
        let volume_layers: Vec<Vec<PathBuf>> = dirs.collect();
        undo.push("release layers", async {
            let _ = d.images.release_layers(&id).await;
        });
        // Scratch mount points of idmapped layers and volumes (pod user namespace only); they
        // are detached before anything under the state directory is removed.
        let scratch = paths.state.join("idmap");
        let scratch2 = scratch.clone();
        undo.push("detach idmapped mounts", async move {
            let _ = crate::storage::idmap::detach_under(&scratch2);
        });
        let infra_userns = PathBuf::from(format!("/proc/{}/ns/user", sandbox.infra_pid));
        // Pushed before mounting (unmount is idempotent): a mount that worked while a later
        // part of the same step failed is undone too.
        undo.push("unmount rootfs", async {
            let _ = crate::storage::unmount(&paths.rootfs);
        });
        match userns.as_ref() {
            None => crate::storage::mount_overlay(&layers, &upper, &work, &paths.rootfs)?,
            Some(u) => {
                // The empty upper becomes the root directory: the pod's root owns it.
                std::os::unix::fs::chown(&upper, Some(u.uid.host_id), Some(u.gid.host_id))
                    .map_err(Error::io(format!("chown {}", upper.display())))?;
                crate::storage::idmap::mount_overlay_idmapped(&layers, &upper, &work, &paths.rootfs, &scratch, &infra_userns)
                    .map_err(|e| Error::FailedPrecondition(format!(
                        "the image's layers cannot be idmapped for the pod's user namespace (berth's root must be on a filesystem with idmapped-mount support): {e}"
                    )))?
            }
        }

        undo.push("unmount image volumes", async {
            let _ = super::imagevol::unmount_all(&paths);
        });
        let mut sources = Vec::new();
        for ((n, _), layers) in volumes.iter().zip(&volume_layers) {
            sources.push((*n, super::imagevol::mount(&paths, *n, layers, &config.mounts[*n].image_sub_path)?));
        }
        let spec_config = super::imagevol::spec_config(&config, &sources);

        let sb_paths = SandboxPaths::new(d, &sandbox.id);
        let hostname_file = sb_paths.hostname_file();
        let hosts_file = sb_paths.hosts_file();
        let resolv_conf = sb_paths.resolv_conf();
        let sctx = SandboxContext {
            sandbox_id: &sandbox.id,
            config: &sandbox.config,
            netns_path: sandbox.netns_path.as_deref(),
            namespaces: match &sandbox.pinned {
                None => PodNamespaces::Infra(sandbox.infra_pid),
                Some(p) => PodNamespaces::Pinned { ipc: p.ipc.as_deref(), uts: p.uts.as_deref() },
            },
            hostname: &sandbox.hostname,
            hosts_file: &hosts_file,
            resolv_conf: &resolv_conf,
            hostname_file: &hostname_file,
            shm_path: sandbox.shm_mounted.then_some(sb_paths.shm.as_path()),
            cgroup_parent: &sandbox.cgroup_parent,
            userns: userns.as_ref(),
        };
        let cctx = ContainerContext {
            container_id: &id,
            config: &spec_config,
            image: &image.config,
            rootfs: &paths.rootfs,
            own_oom_score_adj: d.own_oom_score_adj,
            pid_target,
            features: &runtime.features,
        };
        let mut oci = spec::container_spec_with(&sctx, &cctx, &d.host_facts)?;
        if let (Some(u), Some(process)) = (userns.as_ref(), oci.process().as_ref()) {
            crate::spec::userns::check_ids(u, process.user())?;
        }
        // NRI plugins see the container as the runtime will get it and may adjust it, each after
        // the ones before (their mounts are idmapped below like the CRI's); a refusal undoes it
        // all, and plugins that took the event then get StopContainer and RemoveContainer. The
        // container is stored (and listed) only after them, and plugin synchronization waits
        // until it is (see crate::nri).
        let nri_sync = match &d.nri {
            Some(nri) => {
                let sync = nri.block_sync().await;
                let pod = crate::records::nri_pod(&sandbox);
                let base = crate::records::nri_container(&record);
                nri.create_container(&pod, &base, &mut oci).await?;
                let gone = crate::nri::convert::with_spec(base, &oci);
                undo.push("NRI StopContainer and RemoveContainer", async move {
                    nri.stop_container(&pod, &gone).await;
                    nri.remove_container(&pod, &gone).await;
                });
                Some(sync)
            }
            None => None,
        };
        match userns.as_ref() {
            // The runtime idmaps mounts itself when its features say so; else berth does.
            Some(u) if runtime.features.idmap_mounts => {
                crate::spec::userns::set_mount_idmaps(&mut oci, u);
            }
            Some(_) => idmap_bind_mounts(&mut oci, &scratch, &infra_userns)?,
            None => {}
        }
        let hooks = spec::hooks::load(&d.config.runtime.hooks_dir)
            .map_err(|source| spec::SpecError::Hooks { container: id.clone(), source })?;
        let injected = spec::hooks::inject(&mut oci, &hooks, !spec_config.mounts.is_empty());
        if !injected.is_empty() {
            tracing::info!(hooks = ?injected, "OCI hooks injected");
        }
        record.user = spec::effective_user(&oci);
        let config_json = paths.bundle.join("config.json");
        let bytes = serde_json::to_vec_pretty(&oci).map_err(|e| Error::io("encoding config.json")(e.into()))?;
        crate::util::write_atomic(&config_json, &bytes).map_err(Error::io(format!("writing {}", config_json.display())))?;

        // The record goes in before the runtime knows the container, so a crash from here on
        // leaves a record that Remove can clean up; a crash before it leaves only directories,
        // mounts and a lease without a record, which `recover` sweeps at the next start.
        d.records.put_container(&record)?;
        undo.push("drop record", async { let _ = d.records.delete_container(&id); });
        // Stored: a plugin synchronized from now on finds it (not across the runtime create,
        // which may take long while new creates wait behind a waiting Synchronize).
        drop(nri_sync);

        let mspec = MonitorSpec {
            id: id.clone(),
            bundle: paths.bundle.clone(),
            runtime: runtime.path.clone(),
            runtime_root: runtime.root.clone(),
            systemd_cgroup: runtime.systemd_cgroup,
            log_path: (!log_path.is_empty()).then(|| PathBuf::from(&log_path)),
            exit_file: paths.exit_file.clone(),
            pid_file: paths.bundle.join("pidfile"),
            attach_socket: paths.bundle.join("attach"),
            terminal: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            log_size_max: d.config.log_size_max,
        };
        if let Some(log) = mspec.log_path.clone() {
            // The monitor creates the log file before the runtime runs; a failed create must not
            // leave an empty one behind (one with content stays: it may explain the failure).
            undo.push("remove empty log file", async move {
                if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(&log);
                }
            });
        }
        let started = std::time::Instant::now();
        let spawned = crate::monitor::spawn(&d.monitor_bin, &mspec).await?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, pid = spawned.container_pid, "runtime create done");
        // The runtime has bound the idmapped volumes into the container's own mount namespace;
        // the host-side copies are no longer needed.
        crate::storage::idmap::detach_under(&scratch)?;
        record.pid = spawned.container_pid;
        record.monitor_pid = spawned.monitor_pid;
        if let Some(sd) = &d.systemd {
            sd.place_monitor(&record.id, &sandbox.cgroup_parent, spawned.monitor_pid).await;
        }
        // No fsync of its own: after a crash `recover` reads both PIDs back (`monitor.pid`, the
        // runtime's state) when the runtime holds the container.
        d.records.put_container_lazy(&record)?;
        Ok::<(), Error>(())
    }
    .instrument(span.clone())
    .await;

    match result {
        Ok(()) => {
            undo.commit();
            d.records.publish_container(crate::records::ContainerEventKind::Created, &record);
            d.records.watch_container(&record);
            tracing::info!(parent: &span, "container created");
            if let Some((nri, pod)) = d.nri_pod(&record.sandbox_id) {
                nri.post_create_container(&pod, &crate::records::nri_container(&record)).await;
            }
            Ok(id)
        }
        Err(e) => {
            tracing::warn!(parent: &span, error = %e, "CreateContainer failed; undoing");
            let _ = runtime.delete(&id, true).await;
            undo.run().instrument(span).await;
            d.drop_lock(&id);
            Err(e)
        }
    }
}

/// For PID namespace mode TARGET: the host PID of the container `namespace_options.target_id`,
/// which must be a running container of the same pod (kubelet uses it for ephemeral debug
/// containers). `None` for every other mode.
///
/// Errors: InvalidArgument (empty target_id, or a container of another pod), NotFound (no such
/// container), FailedPrecondition (the target is not running).
fn pid_target(d: &Daemon, sandbox_id: &str, sc: &crate::cri::v1::LinuxContainerSecurityContext) -> Result<Option<i32>> {
    let Some(ns) = sc.namespace_options.as_ref() else { return Ok(None) };
    if ns.pid != crate::cri::v1::NamespaceMode::Target as i32 {
        return Ok(None);
    }
    let field = "config.linux.security_context.namespace_options.target_id";
    if ns.target_id.is_empty() {
        return Err(Error::invalid(field, "must name a container when pid mode is TARGET"));
    }
    let target = super::get(d, &ns.target_id)?;
    if target.sandbox_id != sandbox_id {
        return Err(Error::invalid(
            field,
            format!("container {} belongs to pod sandbox {}, not {sandbox_id}", target.id, target.sandbox_id),
        ));
    }
    if target.state != ContainerState::Running || target.pid <= 0 {
        return Err(Error::FailedPrecondition(format!(
            "{field}: container {} is {:?}, not running: pid mode TARGET joins a running container's PID namespace",
            target.id, target.state
        )));
    }
    Ok(Some(target.pid))
}

/// Replaces the source of every bind mount of `spec` (CRI volumes, the pod's `/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname` and `/dev/shm`) with an idmapped copy under `scratch`
/// made through the pod's user namespace `userns`, so the pod's ids own what host ids own
/// (runc 1.1 would ignore OCI mount `uidMappings`). Errors: FailedPrecondition naming the mount
/// and its source, e.g. a filesystem without idmapped-mount support.
fn idmap_bind_mounts(spec: &mut oci_spec::runtime::Spec, scratch: &Path, userns: &Path) -> Result<()> {
    let Some(mounts) = spec.mounts_mut().as_mut() else { return Ok(()) };
    for (i, m) in mounts.iter_mut().enumerate() {
        if m.typ().as_deref() != Some("bind") {
            continue;
        }
        let Some(src) = m.source().clone() else { continue };
        let at = scratch.join(format!("v{i}"));
        crate::storage::idmap::idmapped_bind(&src, &at, userns).map_err(|e| {
            Error::FailedPrecondition(format!(
                "mount {}: host path {} cannot be idmapped for the pod's user namespace (its filesystem, or one mounted below it, lacks idmapped-mount support): {e}",
                m.destination().display(),
                src.display()
            ))
        })?;
        m.set_source(Some(at));
    }
    Ok(())
}
