//! One connected NRI plugin: registration, Configure, and the calls the runtime makes on it,
//! over the two ttrpc connections of its trunk ([`super::mux`]).
//!
//! The sequence follows containerd/nri v0.12.1 (`pkg/adaptation/plugin.go`): the plugin calls
//! `Runtime.RegisterPlugin(name, index)` within the registration timeout; the runtime calls
//! `Plugin.Configure` (runtime name and version, both timeouts in milliseconds) and keeps the
//! event mask it returns (bit `e - 1` for event `e`; 0 means every event); the caller then
//! synchronizes it ([`Plugin::call`] with `Synchronize`) before it gets events.

use super::api;
use super::mux::{self, Trunk};
use futures_util::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use ttrpc::r#async::{Client, MethodHandler, Server, Service, TtrpcContext};

/// The ttrpc service a plugin serves.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The ttrpc service the runtime serves to plugins.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// The NRI protocol version berth speaks (the vendored proto's release).
pub const NRI_VERSION: &str = "v0.12.1";

/// The events a plugin may subscribe to (nri `api.ValidEvents`): bits 0 to 13.
const VALID_EVENTS: i32 = (1 << 14) - 1;

/// Why a plugin could not be connected, or a call on it failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin did not register within the registration timeout.
    #[error("did not register within {0:?}")]
    NotRegistered(Duration),
    /// The plugin registered with a name or index NRI does not allow, or answered Configure
    /// with an event mask naming no event.
    #[error("refused: {what}: {why}")]
    BadRegistration { what: String, why: String },
    /// The plugin answered with an error status: its verdict, which fails the operation.
    #[error("plugin {plugin} failed {method}: {message} (ttrpc code {code})")]
    Refused { plugin: String, method: String, code: i32, message: String },
    /// The plugin is unreachable: connection closed, timeout, or a reply that does not decode.
    /// The plugin is dropped; the operation goes on without it (as containerd does).
    #[error("plugin {plugin}: {method}: {message}")]
    Broken { plugin: String, method: String, message: String },
}

impl PluginError {
    /// Whether the plugin must be dropped (it cannot be talked to any more).
    pub fn is_broken(&self) -> bool {
        !matches!(self, PluginError::Refused { .. })
    }
}

/// A registered and configured plugin.
pub struct Plugin {
    /// `<index>-<name>`, as NRI names plugins in logs.
    pub id: String,
    /// The two-digit index plugins are ordered by.
    pub index: String,
    /// The event mask from Configure (never 0: "all" is stored as every valid bit).
    pub events: i32,
    client: Client,
    // Both kept for as long as the plugin is: dropping the trunk closes the connection.
    trunk: Trunk,
    // Not Sync (it holds its listener); only kept, never used.
    _server: std::sync::Mutex<Server>,
    broken: AtomicBool,
    /// Calls go one at a time, as nri's runtime makes them: plugin handlers written for it
    /// need not be reentrant, and ttrpc stream IDs reach the plugin in increasing order.
    calls: tokio::sync::Mutex<()>,
    /// A pre-launched plugin's process, killed when the plugin is dropped ([`super::launch`]).
    child: std::sync::Mutex<Option<tokio::process::Child>>,
}

/// How the runtime introduces itself and times plugins ([`crate::config::NriConfig`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub runtime_name: String,
    pub runtime_version: String,
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
    /// Where `Runtime.UpdateContainers` calls go ([`super::Nri::take_updates`]).
    pub updates: tokio::sync::mpsc::Sender<super::Update>,
}

/// Longest plugin name accepted (nri sets none; this keeps log lines readable).
const NAME_MAX: usize = 128;

/// A reply carrying an error status, as a ttrpc handler must give it for the peer to see the
/// code and message (a handler's `Err` reaches the peer as UNKNOWN with a debug dump).
fn status_reply(code: ttrpc::Code, message: impl ToString) -> ttrpc::Response {
    let mut resp = ttrpc::Response::new();
    resp.set_status(ttrpc::get_status(code, message));
    resp
}

/// The plugin's `<index>-<name>` once it registered (shared by the runtime service's handlers).
type Registered = std::sync::Arc<std::sync::OnceLock<String>>;

/// Serves `nri.pkg.api.v1alpha1.Runtime.RegisterPlugin`: checks the name and index (a bad one
/// is answered INVALID_ARGUMENT, so the plugin sees why) and hands the outcome to [`connect`].
struct Register {
    outcome: tokio::sync::mpsc::UnboundedSender<Result<api::RegisterPluginRequest, PluginError>>,
    registered: Registered,
}

#[async_trait::async_trait]
impl MethodHandler for Register {
    async fn handler(&self, _ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<ttrpc::Response> {
        let r = match api::RegisterPluginRequest::decode(req.payload.as_slice()) {
            Ok(r) => r,
            Err(e) => return Ok(status_reply(ttrpc::Code::INVALID_ARGUMENT, format!("RegisterPluginRequest: {e}"))),
        };
        if let Some(id) = self.registered.get() {
            return Ok(status_reply(ttrpc::Code::FAILED_PRECONDITION, format!("already registered as {id}")));
        }
        if let Err(e) = check_registration(&r) {
            let message = e.to_string();
            let _ = self.outcome.send(Err(e));
            return Ok(status_reply(ttrpc::Code::INVALID_ARGUMENT, message));
        }
        let _ = self.registered.set(format!("{}-{}", r.plugin_idx, r.plugin_name));
        let _ = self.outcome.send(Ok(r));
        let mut resp = ttrpc::Response::new();
        resp.set_payload(api::Empty {}.encode_to_vec());
        Ok(resp)
    }
}

/// Serves `nri.pkg.api.v1alpha1.Runtime.UpdateContainers` (updates a plugin sends on its own):
/// only from a registered plugin (FAILED_PRECONDITION before); queues them for the daemon
/// ([`super::Nri::take_updates`]) and answers at once, the updates that did not fit in the
/// queue ([`super::UPDATE_QUEUE`]) as failed; an update that fails later is logged by the
/// daemon. Evictions are not carried out (as containerd).
struct UpdateContainers {
    registered: Registered,
    queue: tokio::sync::mpsc::Sender<super::Update>,
}

#[async_trait::async_trait]
impl MethodHandler for UpdateContainers {
    async fn handler(&self, _ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<ttrpc::Response> {
        let Some(plugin) = self.registered.get() else {
            return Ok(status_reply(ttrpc::Code::FAILED_PRECONDITION, "UpdateContainers before RegisterPlugin"));
        };
        let r = match api::UpdateContainersRequest::decode(req.payload.as_slice()) {
            Ok(r) => r,
            Err(e) => return Ok(status_reply(ttrpc::Code::INVALID_ARGUMENT, format!("UpdateContainersRequest: {e}"))),
        };
        if !r.evict.is_empty() {
            tracing::warn!(%plugin, evictions = r.evict.len(), "NRI: evictions are not carried out (as containerd)");
        }
        let failed = super::enqueue(&self.queue, plugin, r.update);
        if !failed.is_empty() {
            tracing::warn!(%plugin, failed = failed.len(), "NRI: UpdateContainers past the update queue's room; answered as failed");
        }
        let mut resp = ttrpc::Response::new();
        resp.set_payload(api::UpdateContainersResponse { failed }.encode_to_vec());
        Ok(resp)
    }
}

/// Checks an external plugin's registration as nri's `api.CheckPluginName` and
/// `api.CheckPluginIndex` do: a name of `[A-Za-z0-9_.+-]`, an index of exactly two digits.
fn check_registration(r: &api::RegisterPluginRequest) -> Result<(), PluginError> {
    if r.plugin_name.is_empty() || !r.plugin_name.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c)) {
        let shown: String = r.plugin_name.chars().take(NAME_MAX).collect();
        return Err(PluginError::BadRegistration {
            what: format!("name {shown:?}"),
            why: "expected letters, digits, '_', '.', '+' or '-'".into(),
        });
    }
    if r.plugin_name.len() > NAME_MAX {
        return Err(PluginError::BadRegistration {
            what: format!("a name of {} bytes", r.plugin_name.len()),
            why: format!("at most {NAME_MAX}"),
        });
    }
    if r.plugin_idx.len() != 2 || !r.plugin_idx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PluginError::BadRegistration { what: format!("index {:?}", r.plugin_idx), why: "expected two digits".into() });
    }
    Ok(())
}

/// Takes a plugin's connection through registration and Configure. `peer` names it in logs
/// until it has a name (e.g. its pid).
///
/// Errors: [`PluginError::NotRegistered`], [`PluginError::BadRegistration`], or Configure's
/// error; the connection is closed then.
pub async fn connect(stream: tokio::net::UnixStream, settings: &Settings, peer: &str, config: String) -> Result<Plugin, PluginError> {
    let (trunk, conns) = mux::split(stream);
    let (reg_tx, mut reg_rx) = tokio::sync::mpsc::unbounded_channel();
    let registered = Registered::default();
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert("RegisterPlugin".into(), Box::new(Register { outcome: reg_tx, registered: registered.clone() }));
    methods.insert("UpdateContainers".into(), Box::new(UpdateContainers { registered, queue: settings.updates.clone() }));
    let services = HashMap::from([(RUNTIME_SERVICE.to_string(), Service { methods, streams: HashMap::new() })]);
    let (runtime_conn, plugin_conn) = (conns.runtime_service, conns.plugin_service);
    // The server's accept loop yields this one connection, then waits (ending it would be
    // harmless, but a pending stream keeps the loop's intent plain).
    let incoming = futures_util::stream::once(async move { Ok::<_, std::io::Error>(runtime_conn) }).chain(futures_util::stream::pending());
    let mut server = Server::new().register_service(services).add_listener(ttrpc::r#async::transport::Listener::new(incoming));
    let broken = |method: &str, message: String| PluginError::Broken { plugin: peer.to_string(), method: method.into(), message };
    server.start().await.map_err(|e| broken("serving", e.to_string()))?;
    let client = Client::new(ttrpc::r#async::transport::Socket::new(plugin_conn));

    let reg = tokio::select! {
        r = reg_rx.recv() => r.ok_or_else(|| broken("RegisterPlugin", "connection closed".into()))?,
        () = trunk.closed() => return Err(broken("RegisterPlugin", "connection closed before registering (or sent what is not NRI's framing)".into())),
        () = tokio::time::sleep(settings.registration_timeout) => return Err(PluginError::NotRegistered(settings.registration_timeout)),
    };
    let reg = match reg {
        Ok(r) => r,
        Err(e) => {
            // Let the refusal reach the plugin (it hangs up on it) before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), trunk.closed()).await;
            return Err(e);
        }
    };
    let mut plugin = Plugin {
        id: format!("{}-{}", reg.plugin_idx, reg.plugin_name),
        index: reg.plugin_idx.clone(),
        events: VALID_EVENTS,
        client,
        trunk,
        _server: std::sync::Mutex::new(server),
        broken: AtomicBool::new(false),
        calls: tokio::sync::Mutex::new(()),
        child: std::sync::Mutex::new(None),
    };
    let configure = api::ConfigureRequest {
        config,
        runtime_name: settings.runtime_name.clone(),
        runtime_version: settings.runtime_version.clone(),
        registration_timeout: settings.registration_timeout.as_millis() as i64,
        request_timeout: settings.request_timeout.as_millis() as i64,
        nri_version: NRI_VERSION.into(),
    };
    let reply: api::ConfigureResponse = plugin.call("Configure", &configure, settings.request_timeout).await?;
    if reply.events & !VALID_EVENTS != 0 {
        return Err(PluginError::BadRegistration {
            what: format!("Configure's event mask {:#x}", reply.events),
            why: format!("bits outside {VALID_EVENTS:#x} name no event"),
        });
    }
    if reply.events != 0 {
        plugin.events = reply.events;
    }
    tracing::info!(plugin = %plugin.id, peer, events = format_args!("{:#x}", plugin.events), "NRI plugin registered");
    Ok(plugin)
}

impl Plugin {
    /// Ties a pre-launched plugin's process to it: killed when the plugin is closed or dropped.
    pub fn own_process(&self, child: tokio::process::Child) {
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    }

    /// Whether the plugin subscribed to `event`.
    pub fn wants(&self, event: api::Event) -> bool {
        let e = event as i32;
        e > 0 && self.events & (1 << (e - 1)) != 0
    }

    /// Whether the plugin can still be called: its connection is open and no call on it broke.
    pub fn is_alive(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.trunk.is_closed()
    }

    /// Closes the plugin's connection (it timed out, or sent what cannot be read); the plugin
    /// sees its connection end, as nri's runtime closes a plugin.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Relaxed);
        self.trunk.close();
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.start_kill();
        }
    }

    /// For a launched plugin whose connection closed: how its process ended, waiting up to a
    /// second for it (then killing it); `None` for a plugin that connected by itself.
    pub async fn process_end(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("unknown ({e})"),
            Err(_) => {
                let _ = child.start_kill();
                "still running; killed".into()
            }
        })
    }

    /// Resolves once the plugin's connection is closed.
    pub async fn closed(&self) {
        self.trunk.closed().await
    }

    /// Calls `Plugin.<method>` with `req`, waiting at most `timeout`; the deadline is sent along
    /// (ttrpc `timeout_nano`), so the plugin's handler sees it too.
    ///
    /// Errors: [`PluginError::Refused`] when the plugin returns an error status (but
    /// DEADLINE_EXCEEDED), [`PluginError::Broken`] for everything else, which also marks the
    /// plugin dead.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PluginError> {
        let mut r = ttrpc::Request::new();
        r.set_service(PLUGIN_SERVICE.into());
        r.set_method(method.into());
        r.set_payload(req.encode_to_vec());
        r.set_timeout_nano(timeout.as_nanos().min(i64::MAX as u128) as i64);
        let broken = |message: String| {
            self.broken.store(true, Ordering::Relaxed);
            PluginError::Broken { plugin: self.id.clone(), method: method.into(), message }
        };
        // One at a time: the deadline starts once it is this call's turn (each call before it is
        // bounded by its own). The client enforces the deadline itself; the outer bound only
        // guards against a client that would not, and a closed connection ends the call at once.
        let _turn = self.calls.lock().await;
        let answered = tokio::select! {
            r = tokio::time::timeout(timeout + Duration::from_secs(1), self.client.request(r)) => r,
            () = self.trunk.closed() => return Err(broken("the connection closed".into())),
        };
        let resp = match answered {
            Err(_) => return Err(broken(format!("no reply within {timeout:?}"))),
            Ok(Err(ttrpc::Error::RpcStatus(s))) if s.code() != ttrpc::Code::DEADLINE_EXCEEDED => {
                return Err(PluginError::Refused {
                    plugin: self.id.clone(),
                    method: method.into(),
                    code: s.code() as i32,
                    message: s.message.clone(),
                })
            }
            Ok(Err(e)) => return Err(broken(format!("{e} (request timeout {timeout:?})"))),
            Ok(Ok(resp)) => resp,
        };
        Resp::decode(resp.payload.as_slice()).map_err(|e| broken(format!("reply does not decode: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked_as_nri_does() {
        let reg = |n: &str, i: &str| api::RegisterPluginRequest { plugin_name: n.into(), plugin_idx: i.into(), nri_version: String::new() };
        assert!(check_registration(&reg("cri-test-nri-create", "00")).is_ok());
        assert!(check_registration(&reg("a_b.c+d", "99")).is_ok());
        for (n, i) in [("", "00"), ("a b", "00"), ("a/b", "00"), ("x", "0"), ("x", "100"), ("x", "a1")] {
            assert!(check_registration(&reg(n, i)).is_err(), "{n:?} {i:?}");
        }
    }
}
