//! CRI RuntimeService: decode, validate, call one domain function, encode. Nothing here touches
//! a mount, a process or the store directly.

use super::convert;
use super::liststream::{batched, ListStream};
use crate::cri::v1 as cri;
use crate::cri::v1::runtime_service_server::RuntimeService;
use crate::daemon::Daemon;
use crate::streaming::server::{StreamRequest, StreamingServer};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// The CRI runtime API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";

/// RuntimeService over a shared [`Daemon`].
pub struct RuntimeServer {
    d: Arc<Daemon>,
    /// The streaming server that serves the URLs Exec, Attach and PortForward return.
    streaming: Arc<StreamingServer>,
    /// Pod CIDR from the last UpdateRuntimeConfig (kubelet sends the node's).
    pod_cidr: Mutex<String>,
}

impl RuntimeServer {
    /// A server for `d` whose streaming URLs point at `streaming`.
    pub fn new(d: Arc<Daemon>, streaming: Arc<StreamingServer>) -> Self {
        RuntimeServer { d, streaming, pod_cidr: Mutex::new(String::new()) }
    }

    /// ListPodSandbox's items (also StreamPodSandboxes').
    fn pod_sandboxes(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let filter = filter.unwrap_or_default();
        crate::sandbox::list(&self.d).iter().filter(|r| convert::sandbox_matches(r, &filter)).map(convert::pod_sandbox).collect()
    }

    /// ListContainers' items (also StreamContainers').
    fn containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let filter = filter.unwrap_or_default();
        crate::container::list(&self.d).iter().filter(|r| convert::container_matches(r, &filter)).map(convert::container).collect()
    }

    fn url_for(&self, req: StreamRequest) -> Result<String, Status> {
        self.streaming.url_for(req).map_err(|e| Status::internal(format!("streaming server: {e}")))
    }
}

type R<T> = Result<Response<T>, Status>;

/// Runs a blocking stats read (cgroupfs, procfs, a walk of a writable layer) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    d: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    let d = d.clone();
    tokio::task::spawn_blocking(move || f(&d)).await.map_err(|e| Status::internal(format!("stats task failed: {e}")))?.map_err(Status::from)
}

fn not_built(rpc: &str, detail: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by berth yet: {detail}"))
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> R<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config: a PodSandboxConfig is required"))?;
        let id = crate::sandbox::run(&self.d, config, &req.runtime_handler).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> R<cri::StopPodSandboxResponse> {
        crate::sandbox::stop(&self.d, &req.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(&self, req: Request<cri::RemovePodSandboxRequest>) -> R<cri::RemovePodSandboxResponse> {
        crate::sandbox::remove(&self.d, &req.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(&self, req: Request<cri::PodSandboxStatusRequest>) -> R<cri::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let r = crate::sandbox::get(&self.d, &req.pod_sandbox_id)?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&r)),
            info: if req.verbose { convert::pod_sandbox_info(&r) } else { Default::default() },
            // Evented PLEG (GetContainerEvents) reads the pod's container statuses from here.
            containers_statuses: crate::container::list_in_sandbox(&self.d, &r.id).iter().map(convert::container_status).collect(),
            timestamp: crate::util::now_nanos(),
        }))
    }

    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> R<cri::ListPodSandboxResponse> {
        Ok(Response::new(cri::ListPodSandboxResponse { items: self.pod_sandboxes(req.into_inner().filter) }))
    }

    type StreamPodSandboxesStream = ListStream<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(&self, req: Request<cri::StreamPodSandboxesRequest>) -> R<Self::StreamPodSandboxesStream> {
        let items = self.pod_sandboxes(req.into_inner().filter);
        Ok(Response::new(batched(items, |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes })))
    }

    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> R<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config: a ContainerConfig is required"))?;
        let id = crate::container::create(&self.d, &req.pod_sandbox_id, config, req.sandbox_config).await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
    }

    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> R<cri::StartContainerResponse> {
        crate::container::start(&self.d, &req.into_inner().container_id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> R<cri::StopContainerResponse> {
        let req = req.into_inner();
        crate::container::stop(&self.d, &req.container_id, req.timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> R<cri::RemoveContainerResponse> {
        crate::container::remove(&self.d, &req.into_inner().container_id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> R<cri::ListContainersResponse> {
        Ok(Response::new(cri::ListContainersResponse { containers: self.containers(req.into_inner().filter) }))
    }

    type StreamContainersStream = ListStream<cri::StreamContainersResponse>;

    async fn stream_containers(&self, req: Request<cri::StreamContainersRequest>) -> R<Self::StreamContainersStream> {
        let items = self.containers(req.into_inner().filter);
        Ok(Response::new(batched(items, |containers| cri::StreamContainersResponse { containers })))
    }

    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> R<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let r = crate::container::get(&self.d, &req.container_id)?;
        let info = if req.verbose {
            let spec_path = crate::container::ContainerPaths::new(&self.d, &r.id).bundle.join("config.json");
            let spec = std::fs::read(spec_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            convert::container_info(&r, spec)
        } else {
            Default::default()
        };
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(convert::container_status(&r)), info }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        crate::container::update_resources(&self.d, &req.container_id, req.linux).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(&self, req: Request<cri::ReopenContainerLogRequest>) -> R<cri::ReopenContainerLogResponse> {
        crate::container::reopen_log(&self.d, &req.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let out = crate::container::exec_sync(&self.d, &req.container_id, &req.cmd, req.timeout).await?;
        Ok(Response::new(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        let req = req.into_inner();
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(Status::invalid_argument("cmd: must name a command to run"));
        }
        let container_id = crate::container::validate_stream(&self.d, &req.container_id, req.tty, req.stdin, req.stdout, req.stderr)?;
        let url = self.url_for(StreamRequest::Exec {
            container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        let req = req.into_inner();
        let container_id = crate::container::validate_stream(&self.d, &req.container_id, req.tty, req.stdin, req.stdout, req.stderr)?;
        let url =
            self.url_for(StreamRequest::Attach { container_id, tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(&self, req: Request<cri::PortForwardRequest>) -> R<cri::PortForwardResponse> {
        let req = req.into_inner();
        let mut ports = Vec::with_capacity(req.port.len());
        for p in &req.port {
            let port = u16::try_from(*p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Status::invalid_argument(format!("port: {p} is not a TCP port (1-65535)")))?;
            ports.push(port);
        }
        let sandbox = crate::sandbox::get(&self.d, &req.pod_sandbox_id)?;
        if sandbox.state != crate::sandbox::SandboxState::Ready {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", sandbox.id)));
        }
        let url = self.url_for(StreamRequest::PortForward { sandbox_id: sandbox.id, ports })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(&self, req: Request<cri::ContainerStatsRequest>) -> R<cri::ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        let stats = blocking(&self.d, move |d| crate::stats::container_stats(d, &id)).await?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(&self, req: Request<cri::ListContainerStatsRequest>) -> R<cri::ListContainerStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.d, move |d| crate::stats::list_container_stats(d, &filter)).await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = ListStream<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(&self, req: Request<cri::StreamContainerStatsRequest>) -> R<Self::StreamContainerStatsStream> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.d, move |d| crate::stats::list_container_stats(d, &filter)).await?;
        Ok(Response::new(batched(stats, |container_stats| cri::StreamContainerStatsResponse { container_stats })))
    }

    async fn pod_sandbox_stats(&self, req: Request<cri::PodSandboxStatsRequest>) -> R<cri::PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let stats = blocking(&self.d, move |d| crate::stats::pod_sandbox_stats(d, &id)).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(&self, req: Request<cri::ListPodSandboxStatsRequest>) -> R<cri::ListPodSandboxStatsResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.d, move |d| crate::stats::list_pod_sandbox_stats(d, &filter)).await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = ListStream<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(&self, req: Request<cri::StreamPodSandboxStatsRequest>) -> R<Self::StreamPodSandboxStatsStream> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.d, move |d| crate::stats::list_pod_sandbox_stats(d, &filter)).await?;
        Ok(Response::new(batched(stats, |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats })))
    }

    async fn update_runtime_config(&self, req: Request<cri::UpdateRuntimeConfigRequest>) -> R<cri::UpdateRuntimeConfigResponse> {
        let cidr = req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        if !cidr.is_empty() {
            tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
            *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let verbose = req.into_inner().verbose;
        let default = &self.d.config.runtime.default_handler;
        // The binary is checked on every Status, so a runtime removed after start is reported.
        // A handler whose self-test failed is tested again (at most once a minute, in the
        // background): a transient failure must not keep the node NotReady.
        if self.d.handlers.retest_due() {
            // A detached thread: a runtime that hangs must not hold up Status or shutdown.
            let d = self.d.clone();
            let _ = std::thread::Builder::new().name("berth-retest".into()).spawn(move || d.handlers.retest_failed());
        }
        let self_test = self.d.handlers.health(default).map(|h| h.runs).unwrap_or(Ok(()));
        let (runtime_ready, reason, message) = match (self.d.handlers.runtimes().get(default), self_test) {
            (Some(rt), _) if !rt.path.exists() => (
                false,
                "RuntimeHandlerUnavailable",
                format!("the default runtime handler {default:?}: binary {} is missing", rt.path.display()),
            ),
            (None, _) => (false, "RuntimeHandlerUnavailable", format!("the default runtime handler {default:?} is not configured")),
            (Some(_), Err(why)) => (
                false,
                "RuntimeHandlerSelfTestFailed",
                format!("the default runtime handler {default:?} cannot create a container here: {why}"),
            ),
            (Some(_), Ok(())) => (true, "", String::new()),
        };
        let runtime_cond = cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: runtime_ready, reason: reason.into(), message };
        let network = self.d.cni.status();
        let network_cond = cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: network.is_ok(),
            reason: if network.is_ok() { String::new() } else { "NetworkPluginNotReady".into() },
            message: network.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
        };
        let mut handlers: Vec<cri::RuntimeHandler> = self
            .d
            .handlers
            .runtimes()
            .iter()
            .filter(|(name, _)| self.d.handlers.health(name).is_none_or(|h| h.runs.is_ok()))
            .map(|(name, rt)| cri::RuntimeHandler {
                name: name.clone(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: rt.features.recursive_read_only(),
                    user_namespaces: self.d.handlers.user_namespaces(name).is_ok(),
                }),
            })
            .collect();
        // The CRI: "An empty string denotes the default handler." critest looks the default
        // up under "" (and skipped the rro and user-namespace specs when it was missing).
        if let Some(default) = handlers.iter().find(|h| h.name == self.d.config.runtime.default_handler).cloned() {
            handlers.push(cri::RuntimeHandler { name: String::new(), ..default });
        }
        handlers.sort_by(|a, b| a.name.cmp(&b.name));
        let info = if verbose {
            let cfg = serde_json::json!({
                "config": self.d.config,
                "network": network.as_ref().ok(),
                "podCIDR": *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()),
            });
            // What the host offers for security contexts (AppArmor, SELinux) and whether this
            // kernel makes the idmapped mounts pod user namespaces need.
            let mac = crate::spec::mac::host_support();
            let features = serde_json::json!({
                "apparmor": mac.apparmor,
                "selinux": mac.selinux,
                "idmappedMounts": self.d.handlers.idmap_mounts(),
            });
            // Every configured handler, the unusable ones with the reason (runtime_handlers
            // lists only those that can run).
            let mut handlers = serde_json::Map::new();
            for (name, rt) in self.d.handlers.runtimes() {
                let health = self.d.handlers.health(name);
                let verdict = |r: Option<&Result<(), String>>| match r {
                    Some(Ok(())) => "ok".to_string(),
                    Some(Err(e)) => e.clone(),
                    None => "not tested".to_string(),
                };
                let reason = health.as_ref().and_then(|h| h.runs.as_ref().err()).map(|e| format!("self-test: {e}"));
                handlers.insert(
                    name.clone(),
                    serde_json::json!({
                        "available": reason.is_none(),
                        "reason": reason,
                        "path": rt.path,
                        "mountOptions": rt.features.mount_options,
                        "namespaces": rt.features.namespaces,
                        "idmapMounts": rt.features.idmap_mounts,
                        "selfTest": verdict(health.as_ref().map(|h| &h.runs)),
                        "userNamespaces": verdict(health.as_ref().map(|h| &h.user_namespaces)),
                    }),
                );
            }
            for (name, why) in self.d.handlers.unavailable() {
                handlers.insert(name.clone(), serde_json::json!({ "available": false, "reason": why }));
            }
            std::collections::HashMap::from([
                ("config".to_string(), cfg.to_string()),
                ("features".to_string(), features.to_string()),
                ("runtimeHandlers".to_string(), serde_json::Value::Object(handlers).to_string()),
            ])
        } else {
            Default::default()
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![runtime_cond, network_cond] }),
            info,
            runtime_handlers: handlers,
            // SupplementalGroupsPolicy Merge/Strict and ContainerStatus.user are served.
            // A pod with its own user namespace and the host's network is refused (see
            // sandbox::userns), so user_namespaces_host_network stays false.
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: false }),
        }))
    }

    async fn checkpoint_container(&self, _req: Request<cri::CheckpointContainerRequest>) -> R<cri::CheckpointContainerResponse> {
        Err(not_built("CheckpointContainer", "checkpoint/restore is not planned"))
    }

    type GetContainerEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

    /// A stream of every container and pod sandbox event from now on (see [`crate::records::events`]);
    /// it ends with Aborted when this client fell more than `events::EVENT_BUFFER` events behind
    /// (kubelet then relists).
    async fn get_container_events(&self, _req: Request<cri::GetEventsRequest>) -> R<Self::GetContainerEventsStream> {
        use crate::records::{ContainerEvent, ContainerEventKind as K};
        fn encode(ev: &ContainerEvent) -> cri::ContainerEventResponse {
            let kind = match ev.kind {
                K::Created => cri::ContainerEventType::ContainerCreatedEvent,
                K::Started => cri::ContainerEventType::ContainerStartedEvent,
                K::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
                K::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
            };
            cri::ContainerEventResponse {
                container_id: ev.container_id.clone(),
                container_event_type: kind as i32,
                created_at: ev.created_at,
                pod_sandbox_status: ev.sandbox.as_ref().map(convert::pod_sandbox_status),
                containers_statuses: ev.containers.iter().map(convert::container_status).collect(),
            }
        }
        let sub = self.d.records.events().subscribe();
        let stream = futures_util::stream::unfold(Some(sub), |sub| async move {
            let mut sub = sub?;
            match sub.recv().await {
                Ok(Some(ev)) => Some((Ok(encode(&ev)), Some(sub))),
                Ok(None) => None,
                Err(lagged) => Some((Err(Status::aborted(lagged.to_string())), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(&self, _req: Request<cri::ListMetricDescriptorsRequest>) -> R<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse { descriptors: crate::stats::metrics::descriptors() }))
    }

    async fn list_pod_sandbox_metrics(&self, _req: Request<cri::ListPodSandboxMetricsRequest>) -> R<cri::ListPodSandboxMetricsResponse> {
        let pod_metrics = blocking(&self.d, crate::stats::metrics::list_pod_sandbox_metrics).await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse { pod_metrics }))
    }

    type StreamPodSandboxMetricsStream = ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> R<Self::StreamPodSandboxMetricsStream> {
        let metrics = blocking(&self.d, crate::stats::metrics::list_pod_sandbox_metrics).await?;
        Ok(Response::new(batched(metrics, |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics })))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> R<cri::UpdatePodSandboxResourcesResponse> {
        let req = req.into_inner();
        crate::sandbox::update_resources(&self.d, &req.pod_sandbox_id, req.overhead, req.resources).await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }

    async fn runtime_config(&self, _req: Request<cri::RuntimeConfigRequest>) -> R<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: match self.d.config.cgroup_driver() {
                    crate::cgroups::Driver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                    crate::cgroups::Driver::Systemd => cri::CgroupDriver::Systemd,
                } as i32,
            }),
        }))
    }
}
