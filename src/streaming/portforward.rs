//! Port forwarding (kubelet `portforward/httpstream.go` and `portforward/websocket.go`).
//!
//! SPDY `portforward.k8s.io`: per forwarded connection the client opens an `error` and a `data`
//! stream with headers `port` and `requestID` (without `requestID`, kubelet pairs the data
//! stream `n` with the error stream `n-2`); for each complete pair the server dials the port in
//! the pod and copies both ways; a dial error is written as text on the error stream and both
//! streams are closed. Pairs not completed within 30 s are dropped with an error.
//!
//! WebSocket (`v4.channel.k8s.io` framing, ports from the PortForward request): port `i` uses
//! channel `2i` for data and `2i+1` for errors; the first message the server sends on each
//! channel is the port as 2 bytes little-endian. The connection ends when every port's
//! connection ended or the client left.

use super::protocol::WsChoice;
use super::rc_spdy::header;
use super::rc_websocket::spawn_ws_writer;
use super::remotecommand::STREAM_CREATION_TIMEOUT;
use super::spdy::{Session, Stream};
use super::websocket::{self, Frame};
use super::Backend;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Parses a `port` header: a TCP port 1..=65535.
pub fn parse_port(v: Option<&str>) -> Result<u16, String> {
    let v = v.ok_or_else(|| "port header is missing".to_string())?;
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {v:?}: expected 1..65535")),
    }
}

/// The pairing key of a stream: its `requestID`, or kubelet's fallback from the stream id.
pub fn request_key(request_id: Option<&str>, stream_type: &str, stream_id: u32) -> String {
    match request_id {
        Some(r) => r.to_string(),
        None if stream_type == "data" => stream_id.saturating_sub(2).to_string(),
        None => stream_id.to_string(),
    }
}

#[derive(Default)]
struct Pending {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<Instant>,
}

async fn forward_pair(mut error: Stream, mut data: Stream, sandbox_id: String, allowed: Vec<u16>, backend: Arc<dyn Backend>) {
    let result = async {
        let port = parse_port(header(&data, "port"))?;
        if !allowed.is_empty() && !allowed.contains(&port) {
            return Err(format!("port {port} was not requested in the PortForward call (ports {allowed:?})"));
        }
        let mut tcp =
            backend.port_forward(&sandbox_id, port).await.map_err(|e| format!("error forwarding port {port} to pod {sandbox_id}: {e}"))?;
        copy_until_one_side_ends(&mut data, &mut tcp)
            .await
            .map_err(|e| format!("error forwarding port {port} to pod {sandbox_id}: copying: {e}"))
    }
    .await;
    if let Err(msg) = result {
        tracing::debug!(sandbox_id, %msg, "port-forward failed");
        let _ = error.write_all(msg.as_bytes()).await;
    }
    let _ = data.shutdown().await;
    let _ = error.shutdown().await;
}

/// After one direction ended, how long the other may still run (containerd: 1 s, as socat).
pub const HALF_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies both ways; once either direction reached EOF (and was half-closed on the other
/// side), the other gets [`HALF_CLOSE_GRACE`] to finish, then both end. client-go waits for the
/// error stream's EOF after the pod side closed, so waiting for the client's FIN would hang.
pub async fn copy_until_one_side_ends(data: &mut Stream, tcp: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let (mut dr, mut dw) = tokio::io::split(data);
    let (mut tr, mut tw) = tcp.split();
    let up = async {
        let r = tokio::io::copy(&mut dr, &mut tw).await;
        let _ = tw.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut tr, &mut dw).await;
        let _ = dw.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let (first, second) = tokio::select! {
        r = &mut up => (r, tokio::time::timeout(HALF_CLOSE_GRACE, &mut down).await),
        r = &mut down => (r, tokio::time::timeout(HALF_CLOSE_GRACE, &mut up).await),
    };
    first?;
    if let Ok(r) = second {
        r?;
    }
    Ok(())
}

/// Serves one SPDY port-forward connection until the client closes it.
pub async fn serve_spdy<IO>(io: IO, sandbox_id: String, allowed: Vec<u16>, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (session, mut incoming) = Session::server(io);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            s = incoming.recv() => {
                let Some(s) = s else { break };
                let ty = header(&s, "streamtype").unwrap_or("").to_ascii_lowercase();
                let key = request_key(header(&s, "requestid"), &ty, s.id);
                let entry = pending.entry(key.clone()).or_default();
                entry.since.get_or_insert_with(Instant::now);
                match ty.as_str() {
                    "error" => entry.error = Some(s),
                    "data" => entry.data = Some(s),
                    other => {
                        tracing::debug!(stream_type = other, "port-forward: unexpected stream type");
                        continue;
                    }
                }
                if entry.error.is_some() && entry.data.is_some() {
                    if let Some(Pending { error: Some(e), data: Some(d), .. }) = pending.remove(&key) {
                        tasks.spawn(forward_pair(e, d, sandbox_id.clone(), allowed.clone(), backend.clone()));
                    }
                }
            }
            _ = sweep.tick() => {
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| t.elapsed() > STREAM_CREATION_TIMEOUT))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in expired {
                    if let Some(p) = pending.remove(&k) {
                        if let Some(mut e) = p.error {
                            tasks.spawn(async move {
                                let _ = e.write_all(format!("timed out waiting for the data stream of request {k}").as_bytes()).await;
                                let _ = e.shutdown().await;
                            });
                        }
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.abort_all();
    session.close();
}

/// Carries a byte stream in WebSocket binary messages (the `SPDY/3.1+portforward.k8s.io`
/// tunnel): returns the local end of a pipe whose bytes travel as binary messages; a Close or
/// error from the client is EOF, EOF from the local side sends a 1000 Close.
pub fn ws_byte_tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::SinkExt;
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(remote);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(d) => {
                    let Ok(()) = wr.write_all(&d).await else { break };
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
        let _ = sink.close().await;
    });
    local
}

/// Serves one WebSocket port-forward connection for `ports` (non-empty).
pub async fn serve_ws<S>(ws: WebSocketStream<S>, choice: WsChoice, sandbox_id: String, ports: Vec<u16>, backend: Arc<dyn Backend>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let b64 = choice.base64;
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(64);
    let writer = spawn_ws_writer(sink, out_rx);
    let mut inputs: Vec<mpsc::Sender<Bytes>> = Vec::new();
    let mut tasks = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = out_tx.send(websocket::encode(b64, data_ch, &websocket::port_prefix(port))).await;
        let _ = out_tx.send(websocket::encode(b64, err_ch, &websocket::port_prefix(port))).await;
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        let (out, backend, sandbox_id) = (out_tx.clone(), backend.clone(), sandbox_id.clone());
        tasks.spawn(async move {
            let tcp = match backend.port_forward(&sandbox_id, port).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
                    let _ = out.send(websocket::encode(b64, err_ch, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut rd, mut wr) = tcp.into_split();
            let to_pod = tokio::spawn(async move {
                while let Some(b) = in_rx.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.send(websocket::encode(b64, data_ch, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let msg = format!("error forwarding port {port} to pod {sandbox_id}: reading: {e}");
                        let _ = out.send(websocket::encode(b64, err_ch, msg.as_bytes())).await;
                        break;
                    }
                }
            }
            to_pod.abort();
        });
    }
    let reader = async {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            match websocket::decode(b64, false, &msg) {
                Ok(Some(Frame::Data { channel, data })) if channel % 2 == 0 => {
                    if let Some(tx) = inputs.get(usize::from(channel / 2)) {
                        if !data.is_empty() {
                            let _ = tx.send(data).await;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "websocket port-forward: bad client message");
                    break;
                }
            }
        }
    };
    let all_done = async { while tasks.join_next().await.is_some() {} };
    tokio::select! {
        () = reader => {}
        () = all_done => {}
    }
    drop(out_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_pairing() {
        assert_eq!(parse_port(Some("8080")), Ok(8080));
        assert!(parse_port(Some("0")).is_err());
        assert!(parse_port(Some("70000")).is_err());
        assert!(parse_port(None).is_err());
        assert_eq!(request_key(Some("7"), "data", 9), "7");
        assert_eq!(request_key(None, "error", 1), "1");
        assert_eq!(request_key(None, "data", 3), "1");
    }
}
