//! A client for the CRI streaming URLs (the `url` of ExecResponse, AttachResponse,
//! PortForwardResponse), speaking what kubelet/kubectl speak: SPDY/3.1 with
//! `v5.channel.k8s.io` … `channel.k8s.io` or `portforward.k8s.io`, and WebSocket with
//! `v5.channel.k8s.io`, `v4.channel.k8s.io` (binary or `base64.`). The stream-protocol side
//! (stream types, channel framing, status) is written here from the client-go behaviour; the
//! SPDY framing and the HTTP upgrade come from berth's `streaming` module, the only SPDY/3.1
//! implementation in Rust.

use anyhow::{anyhow, bail, Context, Result};
use berth::streaming::client::{self as up, Message};
use berth::streaming::spdy::Stream as SpdyStream;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which transport and protocol to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 offering this `X-Stream-Protocol-Version`.
    Spdy(&'static str),
    /// WebSocket offering this subprotocol.
    WebSocket(&'static str),
}

/// What to do on an exec/attach session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Bytes to send on stdin (`None`: no stdin stream).
    pub stdin: Option<Vec<u8>>,
    /// Half-close stdin after sending it (SPDY FIN, WebSocket v5 close signal).
    pub close_stdin: bool,
    /// Ask for stderr (false with a tty).
    pub stderr: bool,
    /// A tty session.
    pub tty: bool,
    /// A terminal size sent first (tty only).
    pub resize: Option<(u16, u16)>,
}

/// What the server sent.
#[derive(Debug, Default)]
pub struct Output {
    /// stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr bytes.
    pub stderr: Vec<u8>,
    /// The error stream / channel 3: a `metav1.Status` JSON (v4+) or error text.
    pub error: Vec<u8>,
}

impl Output {
    /// The exit code from a v4+ status: 0 for Success, the `ExitCode` cause for
    /// `NonZeroExitCode`; errors for anything else.
    pub fn exit_code(&self) -> Result<i32> {
        let v: serde_json::Value = serde_json::from_slice(&self.error)
            .with_context(|| format!("error stream is not a Status JSON: {:?}", String::from_utf8_lossy(&self.error)))?;
        match v["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if v["reason"] == "NonZeroExitCode" => v["details"]["causes"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| anyhow!("NonZeroExitCode status without an ExitCode cause: {v}")),
            _ => bail!("status is not Success or NonZeroExitCode: {v}"),
        }
    }
}

const LIMIT: Duration = Duration::from_secs(30);

fn hdr(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn read_all(mut s: SpdyStream) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        s.read_to_end(&mut v).await?;
        Ok(v)
    })
}

async fn join(h: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>, what: &str) -> Result<Vec<u8>> {
    match h {
        None => Ok(Vec::new()),
        Some(h) => Ok(tokio::time::timeout(LIMIT, h).await.with_context(|| format!("{what}: no EOF within {LIMIT:?}"))???),
    }
}

/// Runs one exec/attach session at `url` (stdout always requested) until the server ends it.
pub async fn remotecommand(url: &str, t: Transport, s: &Session) -> Result<Output> {
    match t {
        Transport::Spdy(proto) => spdy_rc(url, proto, s).await,
        Transport::WebSocket(proto) => ws_rc(url, proto, s).await,
    }
}

async fn spdy_rc(url: &str, proto: &str, s: &Session) -> Result<Output> {
    let (sess, chosen) = up::spdy(url, &[proto]).await?;
    if chosen.as_deref() != Some(proto) {
        bail!("server negotiated {chosen:?}, offered {proto}");
    }
    // As client-go: every stream opened without FIN (moby/spdystream resets a SYN_STREAM that
    // carries FIN), and only stdin is ever half-closed.
    let err = sess.open_stream(hdr(&[("streamType", "error")]), false).await?;
    let mut stdin = match &s.stdin {
        Some(_) => Some(sess.open_stream(hdr(&[("streamType", "stdin")]), false).await?),
        None => None,
    };
    let out = sess.open_stream(hdr(&[("streamType", "stdout")]), false).await?;
    let errs = if s.stderr && !s.tty { Some(sess.open_stream(hdr(&[("streamType", "stderr")]), false).await?) } else { None };
    let has_resize = s.tty && !matches!(proto, "channel.k8s.io" | "v2.channel.k8s.io");
    let mut resize = if has_resize { Some(sess.open_stream(hdr(&[("streamType", "resize")]), false).await?) } else { None };
    if let (Some(r), Some((w, h))) = (resize.as_mut(), s.resize) {
        r.write_all(format!("{{\"Width\":{w},\"Height\":{h}}}\n").as_bytes()).await?;
    }
    let (out, errs, err) = (read_all(out), errs.map(read_all), read_all(err));
    if let (Some(st), Some(data)) = (stdin.as_mut(), &s.stdin) {
        st.write_all(data).await?;
        if s.close_stdin {
            st.shutdown().await?;
        }
    }
    let output = Output {
        stdout: join(Some(out), "stdout").await?,
        stderr: join(errs, "stderr").await?,
        error: join(Some(err), "error stream").await?,
    };
    sess.close();
    Ok(output)
}

async fn ws_rc(url: &str, proto: &str, s: &Session) -> Result<Output> {
    let (mut ws, chosen) = up::websocket(url, &[proto]).await?;
    if chosen.as_deref() != Some(proto) {
        bail!("server negotiated {chosen:?}, offered {proto}");
    }
    let b64 = proto.contains("base64");
    let enc = |ch: u8, data: &[u8]| berth::streaming::websocket::encode(b64, ch, data);
    if let (true, Some((w, h))) = (s.tty, s.resize) {
        ws.send(enc(4, format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes())).await?;
    }
    if let Some(data) = &s.stdin {
        ws.send(enc(0, data)).await?;
        if s.close_stdin && proto.starts_with("v5.") {
            ws.send(Message::binary(vec![255u8, if b64 { b'0' } else { 0 }])).await?;
        }
    }
    let mut o = Output::default();
    loop {
        let msg = match tokio::time::timeout(LIMIT, ws.next()).await.context("websocket: no message or close within 30 s")? {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                // A server that closes the TCP connection right after its Close frame is fine.
                if o.error.is_empty() {
                    bail!("websocket: {e}");
                }
                break;
            }
            Some(Ok(m)) => m,
        };
        match berth::streaming::websocket::decode(b64, false, &msg)? {
            Some(berth::streaming::websocket::Frame::Data { channel: 1, data }) => o.stdout.extend_from_slice(&data),
            Some(berth::streaming::websocket::Frame::Data { channel: 2, data }) => o.stderr.extend_from_slice(&data),
            Some(berth::streaming::websocket::Frame::Data { channel: 3, data }) => o.error.extend_from_slice(&data),
            _ => {}
        }
    }
    Ok(o)
}

/// Forwards one connection to `port` at `url`: sends `payload`, reads until the pod side closes.
/// Returns (bytes received, error text the server sent).
pub async fn port_forward(url: &str, t: Transport, port: u16, payload: &[u8]) -> Result<(Vec<u8>, String)> {
    match t {
        Transport::Spdy(proto) => {
            let (sess, _) = up::spdy(url, &[proto]).await?;
            let p = port.to_string();
            // client-go: open the error stream, then half-close it ("we're not writing to it").
            let mut err = sess.open_stream(hdr(&[("streamType", "error"), ("port", &p), ("requestID", "0")]), false).await?;
            err.shutdown().await?;
            let mut data = sess.open_stream(hdr(&[("streamType", "data"), ("port", &p), ("requestID", "0")]), false).await?;
            data.write_all(payload).await?;
            let err = read_all(err);
            let mut got = Vec::new();
            tokio::time::timeout(LIMIT, data.read_to_end(&mut got)).await.context("port-forward data: no EOF within 30 s")??;
            let e = join(Some(err), "port-forward error stream").await?;
            sess.close();
            Ok((got, String::from_utf8_lossy(&e).into_owned()))
        }
        Transport::WebSocket(proto) => {
            let (mut ws, _) = up::websocket(url, &[proto]).await?;
            let b64 = proto.contains("base64");
            ws.send(berth::streaming::websocket::encode(b64, 0, payload)).await?;
            let mut pf = WsPortForward::new(port, b64);
            loop {
                let msg = match tokio::time::timeout(LIMIT, ws.next()).await.context("websocket port-forward: nothing within 30 s")? {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
                    Some(Ok(m)) => m,
                };
                pf.absorb(&msg)?;
            }
            let f = pf.finish();
            Ok((f.received, f.error))
        }
    }
}

/// The receiving side of one port over WebSocket `v4.channel.k8s.io` port-forward framing:
/// channel 0 data, channel 1 error, and the first message on each is the port as 2 bytes
/// little-endian (checked, not kept).
struct WsPortForward {
    port: u16,
    b64: bool,
    seen: [bool; 2],
    got: Vec<u8>,
    err: Vec<u8>,
}

impl WsPortForward {
    fn new(port: u16, b64: bool) -> Self {
        WsPortForward { port, b64, seen: [false; 2], got: Vec::new(), err: Vec::new() }
    }

    /// Takes one message; fails when a channel's first message is not the port.
    fn absorb(&mut self, msg: &Message) -> Result<()> {
        let Some(berth::streaming::websocket::Frame::Data { channel, data }) = berth::streaming::websocket::decode(self.b64, false, msg)?
        else {
            return Ok(());
        };
        let c = usize::from(channel);
        if c > 1 {
            return Ok(());
        }
        if !self.seen[c] {
            self.seen[c] = true;
            let port = self.port;
            if data.as_ref() != port.to_le_bytes() {
                bail!("channel {c}: first message {:?} is not port {port} little-endian", data.as_ref());
            }
            return Ok(());
        }
        if c == 0 {
            self.got.extend_from_slice(&data)
        } else {
            self.err.extend_from_slice(&data)
        }
        Ok(())
    }

    fn finish(self) -> Forwarded {
        Forwarded { received: self.got, error: String::from_utf8_lossy(&self.err).into_owned() }
    }
}

/// What one forwarded connection got: the bytes the pod side sent until it closed, and the
/// text of the port's error stream / channel (empty when all went well).
#[derive(Debug, Default)]
pub struct Forwarded {
    /// Data from the pod, in order.
    pub received: Vec<u8>,
    /// Error text the server sent for this connection.
    pub error: String,
}

/// Largest piece written at once (a WebSocket message, an SPDY write).
const PF_CHUNK: usize = 64 * 1024;

/// One port-forward connection over an open SPDY session, full duplex: streams `error` and
/// `data` with `requestID` = `request_id` (client-go's headers), `payload` written while the
/// pod's bytes are read, until the pod side closes (EOF) or `limit` passes.
async fn spdy_pf_conn(
    sess: &berth::streaming::spdy::Session,
    port: u16,
    request_id: usize,
    payload: Vec<u8>,
    limit: Duration,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Forwarded> {
    let (p, rid) = (port.to_string(), request_id.to_string());
    let mut err = sess.open_stream(hdr(&[("streamType", "error"), ("port", &p), ("requestID", &rid)]), false).await?;
    err.shutdown().await?;
    let data = sess.open_stream(hdr(&[("streamType", "data"), ("port", &p), ("requestID", &rid)]), false).await?;
    let (mut rd, mut wr) = data.split();
    let writer = tokio::spawn(async move {
        for c in payload.chunks(PF_CHUNK) {
            wr.write_all(c).await?;
        }
        wr.flush().await?;
        // Keep the write half open (no FIN) until the reader is done: the pod side ends it.
        Ok::<_, std::io::Error>(wr)
    });
    let err = read_all(err);
    let mut received = Vec::new();
    let read = async {
        let mut buf = vec![0u8; PF_CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            received.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .with_context(|| format!("port-forward connection {request_id}: no EOF within {limit:?} ({} bytes read)", received.len()))?
        .with_context(|| format!("port-forward connection {request_id}: read"))?;
    let wr = tokio::time::timeout(limit, writer).await.with_context(|| format!("port-forward connection {request_id}: writer stuck"))??;
    let wr = wr.with_context(|| format!("port-forward connection {request_id}: write"))?;
    drop(rd.unsplit(wr));
    let e = join(Some(err), "port-forward error stream").await?;
    Ok(Forwarded { received, error: String::from_utf8_lossy(&e).into_owned() })
}

/// `payloads.len()` port-forward connections to `port` at once over ONE SPDY session offering
/// `proto` (`portforward.k8s.io`), as kubectl multiplexes its local connections: requestIDs
/// 0..n, each connection full duplex (its payload written while the pod's bytes are read) and
/// ended by the pod side. Results are in payload order; `limit` bounds each connection.
///
/// With `one_by_one`, connection n+1 is opened only once connection n got its first byte (or
/// EOF, or 5 s passed): all still run at the same time, but they reach the pod's listener one
/// after the other, as a user's connections to kubectl's local port do. Servers with a tiny
/// listen backlog (busybox `nc -ll` listens with a backlog of 2) otherwise see a SYN burst,
/// fall back to SYN cookies and reset some connections.
pub async fn port_forward_spdy_parallel(
    url: &str,
    proto: &str,
    port: u16,
    payloads: Vec<Vec<u8>>,
    limit: Duration,
    one_by_one: bool,
) -> Result<Vec<Forwarded>> {
    let (sess, chosen) = up::spdy(url, &[proto]).await?;
    if chosen.as_deref() != Some(proto) {
        bail!("server negotiated {chosen:?}, offered {proto}");
    }
    let sess = std::sync::Arc::new(sess);
    let mut tasks = Vec::new();
    for (i, p) in payloads.into_iter().enumerate() {
        let s = sess.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(async move { spdy_pf_conn(&s, port, i, p, limit, Some(tx)).await }));
        if one_by_one {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        out.push(t.await.with_context(|| format!("port-forward connection {i}: task"))??);
    }
    sess.close();
    Ok(out)
}

/// One port-forward connection to `port` at `url`, full duplex (unlike [`port_forward`], which
/// writes everything before reading): SPDY (one session, requestID 0) or WebSocket (channel 0
/// data, channel 1 errors, each channel's first message the port, little-endian), until the pod
/// side closes or `limit` passes.
pub async fn port_forward_duplex(url: &str, t: Transport, port: u16, payload: Vec<u8>, limit: Duration) -> Result<Forwarded> {
    match t {
        Transport::Spdy(proto) => {
            let mut v = port_forward_spdy_parallel(url, proto, port, vec![payload], limit, false).await?;
            v.pop().context("no connection result")
        }
        Transport::WebSocket(proto) => {
            let (ws, chosen) = up::websocket(url, &[proto]).await?;
            if chosen.as_deref() != Some(proto) {
                bail!("server negotiated {chosen:?}, offered {proto}");
            }
            let b64 = proto.contains("base64");
            let (mut sink, mut source) = ws.split();
            let writer = tokio::spawn(async move {
                for c in payload.chunks(PF_CHUNK) {
                    sink.send(berth::streaming::websocket::encode(b64, 0, c)).await.map_err(|e| anyhow!("websocket send: {e}"))?;
                }
                Ok::<_, anyhow::Error>(sink)
            });
            let read = async {
                let mut pf = WsPortForward::new(port, b64);
                while let Some(msg) = source.next().await {
                    let msg = match msg {
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(m) => m,
                    };
                    pf.absorb(&msg)?;
                }
                Ok::<_, anyhow::Error>(pf.finish())
            };
            let forwarded =
                tokio::time::timeout(limit, read).await.with_context(|| format!("websocket port-forward: no close within {limit:?}"))??;
            writer.abort();
            Ok(forwarded)
        }
    }
}
