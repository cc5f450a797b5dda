//! The streaming HTTP server (kubelet `pkg/kubelet/cri/streaming/server.go`): CRI Exec, Attach
//! and PortForward return a URL `http://ADDR:PORT/{exec,attach,portforward}/<token>`; the client
//! opens it with `Upgrade: SPDY/3.1` (kubelet, crictl, client-go) or `Upgrade: websocket`
//! (client-go v5, kubectl ≥ 1.30) and the session runs on the upgraded connection. The token
//! holds the request the CRI server validated; query parameters are ignored.

use super::protocol::{self, RcVersion};
use super::remotecommand::{StreamOpts, Target};
use super::token::TokenCache;
use super::{Backend, ExecSpec, StreamError};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// A request the CRI server validated, to be served once on the URL [`StreamingServer::url_for`]
/// returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    /// CRI `ExecRequest`.
    Exec {
        /// Full container ID.
        container_id: String,
        /// Command and arguments.
        cmd: Vec<String>,
        /// Run on a pty.
        tty: bool,
        /// Wire the client's stdin.
        stdin: bool,
        /// Send stdout.
        stdout: bool,
        /// Send stderr (ignored with a tty).
        stderr: bool,
    },
    /// CRI `AttachRequest`.
    Attach {
        /// Full container ID.
        container_id: String,
        /// The container has a pty.
        tty: bool,
        /// Wire the client's stdin.
        stdin: bool,
        /// Send stdout.
        stdout: bool,
        /// Send stderr (ignored with a tty).
        stderr: bool,
    },
    /// CRI `PortForwardRequest`.
    PortForward {
        /// Full pod sandbox ID.
        sandbox_id: String,
        /// Ports the client may forward (empty: any, over SPDY; WebSocket needs them).
        ports: Vec<u16>,
    },
}

impl StreamRequest {
    fn route(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

/// The running server; cheap to share (`Arc`). Dropping the last handle does not stop it:
/// call [`StreamingServer::shutdown`].
pub struct StreamingServer {
    addr: SocketAddr,
    /// `http`, or `https` when `[streaming] tls_cert_file` is set.
    scheme: &'static str,
    inner: Arc<Inner>,
    accept_loop: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    tokens: TokenCache<StreamRequest>,
    backend: Arc<dyn Backend>,
}

impl StreamingServer {
    /// Binds `cfg.address:cfg.port` (port 0: a free port) and spawns the accept loop; each
    /// connection is served by hyper (HTTP/1.1) with upgrades enabled.
    /// Errors: `InvalidArgument` for an unparsable address, `Internal` when binding fails.
    pub async fn start(cfg: &crate::config::StreamingConfig, backend: Arc<dyn Backend>) -> Result<Arc<StreamingServer>, StreamError> {
        let ip: std::net::IpAddr = cfg
            .address
            .parse()
            .map_err(|e| StreamError::InvalidArgument(format!("streaming.address {:?}: expected an IP address: {e}", cfg.address)))?;
        let listener = tokio::net::TcpListener::bind((ip, cfg.port))
            .await
            .map_err(|e| StreamError::Internal(format!("streaming server: binding {ip}:{}: {e}", cfg.port)))?;
        let addr = listener.local_addr().map_err(|e| StreamError::Internal(format!("streaming server: local address: {e}")))?;
        let tls = tls_acceptor(cfg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let inner = Arc::new(Inner { tokens: TokenCache::new(), backend });
        let loop_inner = inner.clone();
        let accept_loop = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming server: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let inner = loop_inner.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let served = match tls {
                        None => http.serve_connection(TokioIo::new(tcp), svc).with_upgrades().await,
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), svc).with_upgrades().await,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "streaming server: TLS handshake failed");
                                return;
                            }
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "streaming server: connection ended with an error");
                    }
                });
            }
        });
        tracing::info!(%addr, "streaming server listening");
        Ok(Arc::new(StreamingServer { addr, scheme, inner, accept_loop: Mutex::new(Some(accept_loop)) }))
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores `req` under a fresh single-use token (valid 1 minute) and returns its URL,
    /// `http://ADDR:PORT/{exec,attach,portforward}/<token>`. An unspecified bind address
    /// (0.0.0.0, ::) is written as loopback. Errors: `Internal` when no random bytes can be read.
    pub fn url_for(&self, req: StreamRequest) -> Result<String, StreamError> {
        let route = req.route();
        let token = self.inner.tokens.insert(req).map_err(|e| StreamError::Internal(e.to_string()))?;
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Ok(format!("{}://{addr}/{route}/{token}", self.scheme))
    }

    /// Stops accepting connections (sessions in progress continue).
    pub fn shutdown(&self) {
        if let Some(h) = self.accept_loop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

/// The TLS acceptor for `[streaming] tls_cert_file` / `tls_key_file` (PEM), or `None` for plain
/// HTTP. rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, ALPN `http/1.1`.
/// Errors: `InvalidArgument` naming the file that cannot be read or holds no usable key/cert.
fn tls_acceptor(cfg: &crate::config::StreamingConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, StreamError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if cfg.tls_cert_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let bad = |key: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StreamError::InvalidArgument(format!("streaming.{key} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.tls_cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("tls_cert_file", &cfg.tls_cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad("tls_cert_file", &cfg.tls_cert_file, &"no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.tls_key_file).map_err(|e| bad("tls_key_file", &cfg.tls_key_file, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| bad("tls_key_file", &cfg.tls_key_file, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

type Resp = Response<Full<Bytes>>;

fn text(code: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn header_values<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

fn has_token(h: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn switching(headers: &[(&'static str, String)]) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().append(*k, v);
        }
    }
    r
}

fn opts_and_target(req: StreamRequest) -> Option<(Target, StreamOpts)> {
    match req {
        StreamRequest::Exec { container_id, cmd, tty, stdin, stdout, stderr } => {
            Some((Target::Exec(ExecSpec { container_id, cmd, tty }), StreamOpts { stdin, stdout, stderr, tty }))
        }
        StreamRequest::Attach { container_id, tty, stdin, stdout, stderr } => {
            Some((Target::Attach(container_id), StreamOpts { stdin, stdout, stderr, tty }))
        }
        StreamRequest::PortForward { .. } => None,
    }
}

async fn handle(inner: Arc<Inner>, mut req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let Some((route, token)) = path.split_once('/') else {
        return Ok(text(StatusCode::NOT_FOUND, format!("no such path {:?}: expected /exec|attach|portforward/<token>", req.uri().path())));
    };
    if !matches!(route, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/') {
        return Ok(text(StatusCode::NOT_FOUND, format!("no such path {:?}: expected /exec|attach|portforward/<token>", req.uri().path())));
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, format!("method {} not allowed: expected GET or POST", req.method())));
    }
    let Some(sreq) = inner.tokens.consume(token) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("{route} token not found: unknown, already used or expired (tokens are valid 1 minute)"),
        ));
    };
    if sreq.route() != route {
        return Ok(text(StatusCode::BAD_REQUEST, format!("token was issued for /{}, not /{route}", sreq.route())));
    }
    let h = req.headers().clone();
    if !has_token(&h, CONNECTION, "upgrade") {
        return Ok(text(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request (Connection: Upgrade)"));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let backend = inner.backend.clone();

    if has_token(&h, UPGRADE, "websocket") {
        let Some(key) = h.get("sec-websocket-key") else {
            return Ok(text(StatusCode::BAD_REQUEST, "websocket upgrade: missing Sec-WebSocket-Key"));
        };
        if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
            return Ok(text(StatusCode::BAD_REQUEST, "websocket upgrade: Sec-WebSocket-Version must be 13"));
        }
        let offered = protocol::split_values(header_values(&h, "sec-websocket-protocol"));
        let is_pf = matches!(sreq, StreamRequest::PortForward { .. });
        let Some(choice) = protocol::negotiate_ws(&offered, is_pf) else {
            return Ok(text(StatusCode::BAD_REQUEST, format!("unable to negotiate a websocket subprotocol: client offered {offered:?}")));
        };
        if let StreamRequest::PortForward { ports, .. } = &sreq {
            if ports.is_empty() && !choice.spdy_tunnel {
                return Ok(text(StatusCode::BAD_REQUEST, "port-forward over websocket needs the ports in the PortForward request"));
            }
        }
        let mut hdrs = vec![
            ("upgrade", "websocket".to_string()),
            ("connection", "Upgrade".to_string()),
            ("sec-websocket-accept", derive_accept_key(key.as_bytes())),
        ];
        if !choice.answer.is_empty() {
            hdrs.push(("sec-websocket-protocol", choice.answer.clone()));
        }
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
            };
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            match sreq {
                StreamRequest::PortForward { sandbox_id, ports } if choice.spdy_tunnel => {
                    super::portforward::serve_spdy(super::portforward::ws_byte_tunnel(ws), sandbox_id, ports, backend).await
                }
                StreamRequest::PortForward { sandbox_id, ports } => {
                    super::portforward::serve_ws(ws, choice, sandbox_id, ports, backend).await
                }
                other => {
                    if let Some((target, opts)) = opts_and_target(other) {
                        super::rc_websocket::serve(ws, choice, target, opts, backend).await
                    }
                }
            }
        });
        return Ok(switching(&hdrs));
    }

    if has_token(&h, UPGRADE, "spdy/3.1") {
        let offered = protocol::split_values(header_values(&h, "x-stream-protocol-version"));
        let mut hdrs = vec![("connection", "Upgrade".to_string()), ("upgrade", "SPDY/3.1".to_string())];
        let session: Box<dyn FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> futures_util::future::BoxFuture<'static, ()> + Send> = match sreq
        {
            StreamRequest::PortForward { sandbox_id, ports } => {
                match protocol::negotiate_spdy_pf(&offered) {
                    Ok(p) => hdrs.extend(p.map(|p| ("x-stream-protocol-version", p.to_string()))),
                    Err(()) => return Ok(negotiation_failed(&offered, &[protocol::PORTFORWARD_PROTOCOL])),
                }
                Box::new(move |io| Box::pin(super::portforward::serve_spdy(io, sandbox_id, ports, backend)))
            }
            other => {
                let version = match protocol::negotiate_spdy_rc(&offered) {
                    Ok(Some(v)) => {
                        hdrs.push(("x-stream-protocol-version", v.name().to_string()));
                        v
                    }
                    Ok(None) => RcVersion::V1,
                    Err(()) => {
                        let names: Vec<&str> = protocol::SPDY_RC_PROTOCOLS.iter().map(|v| v.name()).collect();
                        return Ok(negotiation_failed(&offered, &names));
                    }
                };
                let Some((target, opts)) = opts_and_target(other) else {
                    return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "internal: request kind mismatch"));
                };
                Box::new(move |io| Box::pin(super::rc_spdy::serve(io, version, target, opts, backend)))
            }
        };
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(u) => session(TokioIo::new(u)).await,
                Err(e) => tracing::debug!(error = %e, "SPDY upgrade failed"),
            }
        });
        return Ok(switching(&hdrs));
    }
    Ok(text(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request (expected Upgrade: SPDY/3.1 or websocket)"))
}

fn negotiation_failed(offered: &[String], accepted: &[&str]) -> Resp {
    let mut r = text(
        StatusCode::FORBIDDEN,
        format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {accepted:?}"),
    );
    for a in accepted {
        if let Ok(v) = HeaderValue::from_str(a) {
            r.headers_mut().append("x-accepted-stream-protocol-versions", v);
        }
    }
    r
}
