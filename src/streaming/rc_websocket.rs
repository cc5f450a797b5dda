//! Exec and attach over WebSocket (kubelet `remotecommand/websocket.go` + apimachinery
//! `wsstream`): channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; the server first sends
//! an empty message on the lowest writable channel ("connection established"), at the end the
//! status on channel 3, then closes the WebSocket.

use super::protocol::WsChoice;
use super::remotecommand::{run_backend, Outcome, StreamOpts, Target, DRAIN_TIMEOUT, PIPE_BUFFER};
use super::websocket::{self, Frame, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use super::{Backend, Reader, SessionIo, TermSize, Writer};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Sends every message from `rx` to the socket, then a Close frame (1000); ends on a socket error.
pub(crate) fn spawn_ws_writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        // 1000 Normal Closure: client-go's v5 reader takes only that code as a clean EOF
        // (an empty Close, 1005, fails the session with "error reading from error stream").
        let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    })
}

/// Copies everything the backend writes into `pipe` to `channel` of the socket, until EOF.
pub(crate) fn spawn_ws_pump(mut pipe: DuplexStream, base64: bool, channel: u8, tx: mpsc::Sender<Message>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(websocket::encode(base64, channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Serves one exec/attach session on an upgraded WebSocket connection. Returns when the
/// session ended and the socket was closed. If the client goes away first, the backend future
/// is dropped (which kills an exec'd process).
pub async fn serve<S>(ws: WebSocketStream<S>, choice: WsChoice, target: Target, opts: StreamOpts, backend: Arc<dyn Backend>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let b64 = choice.base64;
    let v5 = choice.version >= super::protocol::RcVersion::V5;
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(64);
    let writer = spawn_ws_writer(sink, out_rx);

    let first = if opts.stdout {
        STDOUT
    } else if opts.effective_stderr() {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(websocket::encode(b64, first, &[])).await;

    let mut pumps = Vec::new();
    let mut io = SessionIo { stdin: None, stdout: None, stderr: None, resize: None };
    for (wanted, channel) in [(opts.stdout, STDOUT), (opts.effective_stderr(), STDERR)] {
        if wanted {
            let (proc_side, ws_side) = tokio::io::duplex(PIPE_BUFFER);
            pumps.push(spawn_ws_pump(ws_side, b64, channel, out_tx.clone()));
            let w: Writer = Box::new(proc_side);
            if channel == STDOUT {
                io.stdout = Some(w);
            } else {
                io.stderr = Some(w);
            }
        }
    }
    let mut stdin_side = None;
    if opts.stdin {
        let (proc_side, ws_side) = tokio::io::duplex(PIPE_BUFFER);
        io.stdin = Some(Box::new(proc_side) as Reader);
        stdin_side = Some(ws_side);
    }
    let mut resize_tx = None;
    if opts.tty {
        let (tx, rx) = mpsc::channel::<TermSize>(8);
        io.resize = Some(rx);
        resize_tx = Some(tx);
    }

    // Client -> server: stdin bytes, resizes, the v5 close signal; ends when the client leaves.
    let reader = async move {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            match websocket::decode(b64, v5, &msg) {
                Ok(Some(Frame::Data { channel: STDIN, data })) => {
                    if let Some(pipe) = stdin_side.as_mut() {
                        if pipe.write_all(&data).await.is_err() {
                            stdin_side = None;
                        }
                    }
                }
                Ok(Some(Frame::Data { channel: RESIZE, data })) => {
                    if let (Some(tx), Ok(size)) = (resize_tx.as_ref(), serde_json::from_slice::<TermSize>(&data)) {
                        let _ = tx.try_send(size);
                    }
                }
                Ok(Some(Frame::Close { channel: STDIN })) => {
                    if let Some(mut pipe) = stdin_side.take() {
                        let _ = pipe.shutdown().await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "websocket remotecommand: bad client message");
                    break;
                }
            }
        }
    };

    let outcome = tokio::select! {
        outcome = run_backend(backend, target, io) => Some(outcome),
        () = reader => None,
    };
    let Some(outcome) = outcome else {
        tracing::debug!("websocket remotecommand: client went away; session dropped");
        for p in pumps {
            p.abort();
        }
        writer.abort();
        return;
    };
    if let Outcome::Error(e) = &outcome {
        tracing::info!(error = %e, "websocket remotecommand: backend failed");
    }
    for p in pumps {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, p).await;
    }
    if let Some(bytes) = outcome.error_stream_bytes(choice.version) {
        let _ = out_tx.send(websocket::encode(b64, ERROR, &bytes)).await;
    }
    drop(out_tx);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, writer).await;
}
