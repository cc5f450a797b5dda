//! A test NRI plugin (the plugin side of containerd/nri v0.12.1, as `pkg/stub` speaks it): it
//! connects to a runtime's NRI socket, registers, answers Configure (every event) and
//! Synchronize, records each call it gets, and at CreateContainer returns a configured
//! adjustment or hangs. The NRI cases (`cases/nri.rs`) drive it.
//!
//! The wire side is berth's own ([`berth::nri::mux`] splits the connection; the messages are
//! [`berth::nri::api`]), with the roles swapped: the plugin serves on the plugin-service
//! connection and calls on the runtime-service one.

use anyhow::{bail, Context, Result};
use berth::nri::api;
use berth::nri::mux::{self, Trunk};
use berth::nri::plugin::{PLUGIN_SERVICE, RUNTIME_SERVICE};
use futures_util::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ttrpc::r#async::{Client, MethodHandler, Server, Service, TtrpcContext};

/// What the plugin does at CreateContainer for containers carrying annotation `key` = `value`
/// (others get no adjustment).
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// The annotation that selects the containers this plugin acts on.
    pub select: (String, String),
    /// Returned as the adjustment.
    pub adjust: Option<api::ContainerAdjustment>,
    /// Never answer (the runtime's request timeout must drop the plugin).
    pub hang: bool,
    /// Set this env variable to the text Configure carried (trimmed), proving it arrived.
    pub env_from_config: Option<String>,
    /// Returned as the updates of other containers.
    pub updates: Vec<api::ContainerUpdate>,
    /// Serve only what a plugin built against nri before v0.12 serves: Configure,
    /// Synchronize, Shutdown, CreateContainer, UpdateContainer, StopContainer and
    /// `StateChange` (recorded as `StateChange:<event number>`).
    pub before_v012: bool,
}

/// One call the plugin got: the method and the container's name (empty for pod events).
pub type Call = (String, String);

/// A connected, registered plugin. Dropping it closes the connection.
pub struct TestPlugin {
    trunk: Trunk,
    // Not Sync (it holds its listener); only kept.
    _server: Mutex<Server>,
    _client: Client,
    calls: Arc<Mutex<Vec<Call>>>,
    synced: Arc<Mutex<Option<api::SynchronizeRequest>>>,
}

struct Handler {
    method: &'static str,
    behaviour: Arc<Behaviour>,
    calls: Arc<Mutex<Vec<Call>>>,
    synced: Arc<Mutex<Option<api::SynchronizeRequest>>>,
    config: Arc<Mutex<String>>,
}

fn reply(m: impl Message) -> ttrpc::Response {
    let mut r = ttrpc::Response::new();
    r.set_payload(m.encode_to_vec());
    r
}

fn bad(e: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::error::get_rpc_status(ttrpc::Code::INVALID_ARGUMENT, e.to_string())
}

#[async_trait::async_trait]
impl MethodHandler for Handler {
    async fn handler(&self, _ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<ttrpc::Response> {
        let p = req.payload.as_slice();
        match self.method {
            "Configure" => {
                let r = api::ConfigureRequest::decode(p).map_err(bad)?;
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(("Configure".into(), String::new()));
                *self.config.lock().unwrap_or_else(|p| p.into_inner()) = r.config;
                // 0: every event.
                Ok(reply(api::ConfigureResponse { events: 0 }))
            }
            "Synchronize" => {
                let r = api::SynchronizeRequest::decode(p).map_err(bad)?;
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(("Synchronize".into(), String::new()));
                *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                Ok(reply(api::SynchronizeResponse::default()))
            }
            "CreateContainer" => {
                let r = api::CreateContainerRequest::decode(p).map_err(bad)?;
                let ctr = r.container.unwrap_or_default();
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(("CreateContainer".into(), ctr.name.clone()));
                let (k, v) = &self.behaviour.select;
                if ctr.annotations.get(k) != Some(v) {
                    return Ok(reply(api::CreateContainerResponse::default()));
                }
                if self.behaviour.hang {
                    std::future::pending::<()>().await;
                }
                let mut adjust = self.behaviour.adjust.clone();
                if let Some(key) = &self.behaviour.env_from_config {
                    let value = self.config.lock().unwrap_or_else(|p| p.into_inner()).trim().to_string();
                    adjust.get_or_insert_with(Default::default).env.push(api::KeyValue { key: key.clone(), value });
                }
                Ok(reply(api::CreateContainerResponse { adjust, update: self.behaviour.updates.clone(), ..Default::default() }))
            }
            "StateChange" => {
                let r = api::StateChangeEvent::decode(p).map_err(bad)?;
                let name = r.container.map(|c| c.name).unwrap_or_default();
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((format!("StateChange:{}", r.event), name));
                Ok(reply(api::Empty {}))
            }
            other => {
                // Every other event carries the container at field 2 (pod events: none).
                #[derive(Clone, PartialEq, prost::Message)]
                struct AnyEvent {
                    #[prost(message, optional, tag = "2")]
                    container: Option<api::Container>,
                }
                let name = AnyEvent::decode(p).ok().and_then(|e| e.container).map(|c| c.name).unwrap_or_default();
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((other.into(), name));
                // Every reply of these is an empty message or one whose fields may be unset.
                Ok(reply(api::Empty {}))
            }
        }
    }
}

/// The methods of `nri.pkg.api.v1alpha1.Plugin` the plugin serves.
const METHODS: &[&str] = &[
    "Configure",
    "Synchronize",
    "Shutdown",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "PostCreateContainer",
    "StartContainer",
    "PostStartContainer",
    "UpdateContainer",
    "PostUpdateContainer",
    "StopContainer",
    "RemoveContainer",
];

impl TestPlugin {
    /// Connects to `socket`, registers as `<idx>-<name>` and waits (10 s at most) until the
    /// runtime has synchronized it.
    pub async fn connect(socket: &Path, name: &str, idx: &str, behaviour: Behaviour) -> Result<TestPlugin> {
        let stream =
            tokio::net::UnixStream::connect(socket).await.with_context(|| format!("connecting to NRI socket {}", socket.display()))?;
        TestPlugin::on(stream, name, idx, behaviour).await
    }

    /// [`TestPlugin::connect`] over a connected stream (a launched plugin's fd 3).
    pub async fn on(stream: tokio::net::UnixStream, name: &str, idx: &str, behaviour: Behaviour) -> Result<TestPlugin> {
        let (trunk, conns) = mux::split(stream);
        let (calls, synced) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(None)));
        let config = Arc::new(Mutex::new(String::new()));
        let behaviour = Arc::new(behaviour);
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        const BEFORE_V012: &[&str] =
            &["Configure", "Synchronize", "Shutdown", "CreateContainer", "UpdateContainer", "StopContainer", "StateChange"];
        for m in if behaviour.before_v012 { BEFORE_V012 } else { METHODS } {
            let h =
                Handler { method: m, behaviour: behaviour.clone(), calls: calls.clone(), synced: synced.clone(), config: config.clone() };
            methods.insert(m.to_string(), Box::new(h));
        }
        let services = HashMap::from([(PLUGIN_SERVICE.to_string(), Service { methods, streams: HashMap::new() })]);
        // The roles of the two connections are the runtime's, swapped.
        let (serve_on, call_on) = (conns.plugin_service, conns.runtime_service);
        let incoming = futures_util::stream::once(async move { Ok::<_, std::io::Error>(serve_on) }).chain(futures_util::stream::pending());
        let mut server = Server::new().register_service(services).add_listener(ttrpc::r#async::transport::Listener::new(incoming));
        server.start().await.context("serving the plugin service")?;
        let client = Client::new(ttrpc::r#async::transport::Socket::new(call_on));
        let mut req = ttrpc::Request::new();
        req.set_service(RUNTIME_SERVICE.into());
        req.set_method("RegisterPlugin".into());
        req.set_payload(
            api::RegisterPluginRequest {
                plugin_name: name.into(),
                plugin_idx: idx.into(),
                nri_version: berth::nri::plugin::NRI_VERSION.into(),
            }
            .encode_to_vec(),
        );
        req.set_timeout_nano(5_000_000_000);
        client.request(req).await.context("RegisterPlugin")?;
        let plugin = TestPlugin { trunk, _server: Mutex::new(server), _client: client, calls, synced };
        for _ in 0..100 {
            if plugin.synced.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return Ok(plugin);
            }
            if plugin.trunk.is_closed() {
                bail!("the runtime closed the NRI connection of {idx}-{name} before Synchronize");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the runtime did not synchronize NRI plugin {idx}-{name} within 10s of its registration")
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What Synchronize told the plugin.
    pub fn synced(&self) -> Option<api::SynchronizeRequest> {
        self.synced.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves when the runtime closes the connection.
    pub async fn closed(&self) {
        self.trunk.closed().await
    }

    /// Whether the runtime has closed the connection, waiting up to `limit` for it.
    pub async fn closed_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.trunk.closed()).await.is_ok()
    }
}
