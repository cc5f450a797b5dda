//! End-to-end tests of the streaming server over real TCP with a fake [`Backend`]: WebSocket
//! (binary, base64, v4, v5 close signal) and SPDY (v4/v5 remotecommand, port-forward), tokens,
//! and client disconnects.

use super::client;
use super::server::{StreamRequest, StreamingServer};
use super::{Backend, ExecSpec, SessionIo, StreamError};
use crate::config::StreamingConfig;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Fake {
    echo_port: u16,
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Backend for Fake {
    async fn exec(&self, spec: ExecSpec, mut io: SessionIo) -> Result<i32, StreamError> {
        let cmd: Vec<&str> = spec.cmd.iter().map(String::as_str).collect();
        match cmd.as_slice() {
            ["exit3"] => {
                if let Some(o) = io.stdout.as_mut() {
                    o.write_all(b"out\n").await.ok();
                }
                if let Some(e) = io.stderr.as_mut() {
                    e.write_all(b"err\n").await.ok();
                }
                Ok(3)
            }
            ["cat"] => {
                let (Some(mut i), Some(mut o)) = (io.stdin.take(), io.stdout.take()) else {
                    return Err(StreamError::InvalidArgument("cat needs stdin and stdout".into()));
                };
                tokio::io::copy(&mut i, &mut o).await.map_err(|e| StreamError::Internal(e.to_string()))?;
                o.shutdown().await.ok();
                Ok(0)
            }
            ["size"] => {
                let mut r = io.resize.take().ok_or_else(|| StreamError::InvalidArgument("no resize".into()))?;
                let s = r.recv().await.ok_or_else(|| StreamError::Internal("resize ended".into()))?;
                if let Some(o) = io.stdout.as_mut() {
                    o.write_all(format!("{}x{}", s.width, s.height).as_bytes()).await.ok();
                }
                Ok(0)
            }
            ["big"] => {
                let chunk = vec![b'x'; 64 * 1024];
                if let Some(o) = io.stdout.as_mut() {
                    for _ in 0..32 {
                        o.write_all(&chunk).await.ok();
                    }
                }
                Ok(7)
            }
            ["sleep"] => {
                let _guard = SetOnDrop(self.dropped.clone());
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(0)
            }
            _ => Err(StreamError::NotFound(format!("no such fake command {cmd:?}"))),
        }
    }

    async fn attach(&self, _container_id: &str, mut io: SessionIo) -> Result<(), StreamError> {
        if let Some(o) = io.stdout.as_mut() {
            o.write_all(b"attached\n").await.ok();
        }
        Ok(())
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream, StreamError> {
        if port != 80 {
            return Err(StreamError::Internal(format!("pod {sandbox_id}: connection refused on port {port}")));
        }
        tokio::net::TcpStream::connect(("127.0.0.1", self.echo_port)).await.map_err(|e| StreamError::Internal(e.to_string()))
    }
}

async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (port, h)
}

pub(super) struct Env {
    pub(super) srv: Arc<StreamingServer>,
    dropped: Arc<AtomicBool>,
    echo: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.srv.shutdown();
        self.echo.abort();
    }
}

pub(super) async fn env() -> Env {
    let (echo_port, echo) = echo_server().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let cfg = StreamingConfig { address: "127.0.0.1".into(), ..Default::default() };
    let srv = StreamingServer::start(&cfg, Arc::new(Fake { echo_port, dropped: dropped.clone() })).await.unwrap();
    Env { srv, dropped, echo }
}

fn exec(cmd: &str, stdin: bool, tty: bool) -> StreamRequest {
    StreamRequest::Exec { container_id: "c1".into(), cmd: vec![cmd.into()], tty, stdin, stdout: true, stderr: !tty }
}

/// Reads every message until the server closes; returns (channel -> bytes).
async fn ws_collect(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, b64: bool) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new(); 8];
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
        if let Ok(Some(super::websocket::Frame::Data { channel, data })) = super::websocket::decode(b64, false, &m) {
            out[usize::from(channel)].extend_from_slice(&data);
        }
    }
    out
}

#[tokio::test]
async fn ws_v5_exit_code_and_output() {
    let e = env().await;
    let url = e.srv.url_for(exec("exit3", false, false)).unwrap();
    assert!(url.starts_with("http://127.0.0.1:") && url.contains("/exec/"), "{url}");
    let (mut ws, proto) = client::websocket(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    let out = ws_collect(&mut ws, false).await;
    assert_eq!(out[1], b"out\n");
    assert_eq!(out[2], b"err\n");
    let status: serde_json::Value = serde_json::from_slice(&out[3]).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    // The token was single-use.
    let err = client::websocket(&url, &["v5.channel.k8s.io"]).await.err().unwrap();
    assert!(matches!(err, client::ClientError::Refused { status: 404, .. }), "{err}");
}

#[tokio::test]
async fn ws_v5_stdin_close_signal() {
    let e = env().await;
    let url = e.srv.url_for(exec("cat", true, false)).unwrap();
    let (mut ws, _) = client::websocket(&url, &["v5.channel.k8s.io"]).await.unwrap();
    ws.send(Message::binary(b"\0hello ".to_vec())).await.unwrap();
    ws.send(Message::binary(b"\0world".to_vec())).await.unwrap();
    ws.send(Message::binary(vec![255u8, 0])).await.unwrap();
    let out = ws_collect(&mut ws, false).await;
    assert_eq!(out[1], b"hello world");
    assert_eq!(out[3], br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn ws_v4_base64_and_tty_resize() {
    let e = env().await;
    let url = e.srv.url_for(exec("size", false, true)).unwrap();
    let (mut ws, proto) = client::websocket(&url, &["v4.base64.channel.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
    ws.send(super::websocket::encode(true, 4, br#"{"Width":120,"Height":40}"#)).await.unwrap();
    let out = ws_collect(&mut ws, true).await;
    assert_eq!(out[1], b"120x40");
    assert_eq!(out[3], br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn ws_client_disconnect_drops_backend() {
    let e = env().await;
    let url = e.srv.url_for(exec("sleep", false, false)).unwrap();
    let (mut ws, _) = client::websocket(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first, Message::binary(vec![1u8]), "empty message on stdout first");
    drop(ws);
    for _ in 0..50 {
        if e.dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend future still alive after the client left");
}

#[tokio::test]
async fn bad_requests_before_upgrade() {
    let e = env().await;
    let url = e.srv.url_for(exec("exit3", false, false)).unwrap();
    let bad = url.replace("/exec/", "/attach/");
    let err = client::websocket(&bad, &[]).await.err().unwrap();
    assert!(matches!(err, client::ClientError::Refused { status: 404 | 400, .. }), "{err}");
    let url = e.srv.url_for(exec("exit3", false, false)).unwrap();
    let err = client::spdy(&url, &["v9.channel.k8s.io"]).await.err().unwrap();
    assert!(matches!(err, client::ClientError::Refused { status: 403, .. }), "{err}");
    let url = e.srv.url_for(exec("exit3", false, false)).unwrap();
    let err = client::upgrade(&url, &[]).await.err().unwrap();
    assert!(matches!(err, client::ClientError::Refused { status: 400, .. }), "{err}");
}

fn h(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn spdy_v4_exec_exit_code_and_stdin() {
    let e = env().await;
    for version in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let url = e.srv.url_for(exec("exit3", false, false)).unwrap();
        let (s, proto) = client::spdy(&url, &[version, "v3.channel.k8s.io"]).await.unwrap();
        assert_eq!(proto.as_deref(), Some(version));
        let mut err = s.open_stream(h(&[("streamType", "error")]), true).await.unwrap();
        let mut out = s.open_stream(h(&[("streamType", "stdout")]), true).await.unwrap();
        let mut errs = s.open_stream(h(&[("streamType", "stderr")]), true).await.unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        out.read_to_end(&mut a).await.unwrap();
        errs.read_to_end(&mut b).await.unwrap();
        err.read_to_end(&mut c).await.unwrap();
        assert_eq!((a.as_slice(), b.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        let status: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        s.close();
    }
    // stdin + v2: no status JSON on success.
    let url = e.srv.url_for(exec("cat", true, false)).unwrap();
    let (s, _) = client::spdy(&url, &["v2.channel.k8s.io"]).await.unwrap();
    let mut err = s.open_stream(h(&[("streamType", "error")]), true).await.unwrap();
    let mut stdin = s.open_stream(h(&[("streamType", "stdin")]), false).await.unwrap();
    let mut out = s.open_stream(h(&[("streamType", "stdout")]), true).await.unwrap();
    let _errs = s.open_stream(h(&[("streamType", "stderr")]), true).await.unwrap();
    stdin.write_all(b"through spdy").await.unwrap();
    stdin.shutdown().await.unwrap();
    let (mut a, mut c) = (Vec::new(), Vec::new());
    out.read_to_end(&mut a).await.unwrap();
    err.read_to_end(&mut c).await.unwrap();
    assert_eq!(a, b"through spdy");
    assert!(c.is_empty(), "{:?}", String::from_utf8_lossy(&c));
}

#[tokio::test]
async fn spdy_port_forward_pairs_and_dial_error() {
    let e = env().await;
    let url = e.srv.url_for(StreamRequest::PortForward { sandbox_id: "p1".into(), ports: vec![] }).unwrap();
    assert!(url.contains("/portforward/"));
    let (s, proto) = client::spdy(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("portforward.k8s.io"));
    let mut pairs = Vec::new();
    for rid in 0..3 {
        let r = rid.to_string();
        let err = s.open_stream(h(&[("streamType", "error"), ("port", "80"), ("requestID", &r)]), false).await.unwrap();
        let data = s.open_stream(h(&[("streamType", "data"), ("port", "80"), ("requestID", &r)]), false).await.unwrap();
        pairs.push((err, data));
    }
    for (i, (_, data)) in pairs.iter_mut().enumerate() {
        let msg = format!("ping {i}");
        data.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        data.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
        data.shutdown().await.unwrap();
        let mut rest = Vec::new();
        data.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
    let mut err = s.open_stream(h(&[("streamType", "error"), ("port", "81"), ("requestID", "9")]), false).await.unwrap();
    let mut data = s.open_stream(h(&[("streamType", "data"), ("port", "81"), ("requestID", "9")]), false).await.unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), err.read_to_end(&mut text)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&text).contains("connection refused on port 81"));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), data.read_to_end(&mut rest)).await.unwrap().unwrap();
    s.close();
}

#[tokio::test]
async fn ws_port_forward_channels() {
    let e = env().await;
    let url = e.srv.url_for(StreamRequest::PortForward { sandbox_id: "p1".into(), ports: vec![80, 81] }).unwrap();
    let (mut ws, proto) = client::websocket(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    ws.send(Message::binary(b"\0hello".to_vec())).await.unwrap();
    let mut got = vec![Vec::new(); 4];
    let mut firsts = [true; 4];
    while got[0] != b"hello" || !String::from_utf8_lossy(&got[3]).contains("refused") {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        let Ok(Some(super::websocket::Frame::Data { channel, data })) = super::websocket::decode(false, false, &m) else { continue };
        let c = usize::from(channel);
        if firsts[c] {
            firsts[c] = false;
            let port = if c < 2 { 80u16 } else { 81 };
            assert_eq!(data.as_ref(), port.to_le_bytes(), "port prefix on channel {c}");
            continue;
        }
        got[c].extend_from_slice(&data);
    }
    ws.close(None).await.ok();
}

#[tokio::test]
async fn attach_over_spdy_v1_without_protocol_header() {
    let e = env().await;
    let req = StreamRequest::Attach { container_id: "c1".into(), tty: false, stdin: false, stdout: true, stderr: false };
    let url = e.srv.url_for(req).unwrap();
    let (s, proto) = client::spdy(&url, &[]).await.unwrap();
    assert_eq!(proto, None);
    let mut err = s.open_stream(h(&[("streamType", "error")]), true).await.unwrap();
    let mut out = s.open_stream(h(&[("streamType", "stdout")]), true).await.unwrap();
    let (mut a, mut c) = (Vec::new(), Vec::new());
    out.read_to_end(&mut a).await.unwrap();
    err.read_to_end(&mut c).await.unwrap();
    assert_eq!(a, b"attached\n");
    assert!(c.is_empty());
}

#[tokio::test]
async fn big_output_drains_before_the_status() {
    let e = env().await;
    let url = e.srv.url_for(exec("big", false, false)).unwrap();
    let (mut ws, _) = client::websocket(&url, &["v5.base64.channel.k8s.io"]).await.unwrap();
    let out = ws_collect(&mut ws, true).await;
    assert_eq!(out[1].len(), 2 * 1024 * 1024);
    assert!(String::from_utf8_lossy(&out[3]).contains("NonZeroExitCode"));

    let url = e.srv.url_for(exec("big", false, false)).unwrap();
    let (s, _) = client::spdy(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let mut err = s.open_stream(h(&[("streamType", "error")]), false).await.unwrap();
    let mut out = s.open_stream(h(&[("streamType", "stdout")]), false).await.unwrap();
    let _errs = s.open_stream(h(&[("streamType", "stderr")]), false).await.unwrap();
    let mut a = Vec::new();
    out.read_to_end(&mut a).await.unwrap();
    let mut c = Vec::new();
    err.read_to_end(&mut c).await.unwrap();
    assert_eq!(a.len(), 2 * 1024 * 1024);
    assert!(String::from_utf8_lossy(&c).contains(r#""message":"7""#));
}

#[tokio::test]
async fn port_forward_moves_megabytes_both_ways() {
    let e = env().await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let url = e.srv.url_for(StreamRequest::PortForward { sandbox_id: "p1".into(), ports: vec![80] }).unwrap();
    let (s, _) = client::spdy(&url, &["portforward.k8s.io"]).await.unwrap();
    let mut er = s.open_stream(h(&[("streamType", "error"), ("port", "80"), ("requestID", "1")]), false).await.unwrap();
    er.shutdown().await.unwrap();
    let data = s.open_stream(h(&[("streamType", "data"), ("port", "80"), ("requestID", "1")]), false).await.unwrap();
    let (mut r, mut w) = tokio::io::split(data);
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&p2).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert!(got == payload, "SPDY port-forward: {} bytes back of {}", got.len(), payload.len());
    s.close();

    let url = e.srv.url_for(StreamRequest::PortForward { sandbox_id: "p1".into(), ports: vec![80] }).unwrap();
    let (ws, _) = client::websocket(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let (mut sink, mut source) = ws.split();
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        for c in p2.chunks(32 * 1024) {
            sink.send(super::websocket::encode(false, 0, c)).await.unwrap();
        }
        sink
    });
    let mut got = Vec::new();
    let mut first = true;
    while got.len() < payload.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), source.next()).await.unwrap().unwrap().unwrap();
        if let Ok(Some(super::websocket::Frame::Data { channel: 0, data })) = super::websocket::decode(false, false, &m) {
            if std::mem::take(&mut first) {
                continue;
            }
            got.extend_from_slice(&data);
        }
    }
    assert!(got == payload, "WebSocket port-forward: {} bytes back", got.len());
    let _ = writer.await.unwrap().close().await;
}

/// `[streaming] tls_cert_file`/`tls_key_file`: the server speaks HTTPS, URLs say https, and a
/// client that trusts the certificate gets the server's answers over TLS (a 404 for an unknown
/// token here). A key file that is no key is refused at start, naming the key.
#[tokio::test]
async fn tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping tls_when_configured: no openssl to make a certificate");
        return;
    }
    let (echo_port, echo) = echo_server().await;
    let cfg = StreamingConfig { address: "127.0.0.1".into(), port: 0, tls_cert_file: cert.clone(), tls_key_file: key.clone() };
    let srv = StreamingServer::start(&cfg, Arc::new(Fake { echo_port, dropped: Arc::new(AtomicBool::new(false)) })).await.unwrap();
    let url = srv.url_for(exec("true", false, false)).unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(srv.local_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.expect("TLS handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /exec/no-such-token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    let _ = tls.read_to_string(&mut reply).await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    srv.shutdown();
    echo.abort();

    let bad = StreamingConfig { tls_key_file: cert.clone(), ..cfg };
    let e = StreamingServer::start(&bad, Arc::new(Fake { echo_port, dropped: Arc::new(AtomicBool::new(false)) }))
        .await
        .err()
        .expect("a certificate is no key");
    assert!(e.to_string().contains("tls_key_file"), "{e}");
}
