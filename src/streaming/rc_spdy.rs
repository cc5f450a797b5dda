//! Exec and attach over SPDY/3.1 (kubelet `remotecommand/httpstream.go`): the client opens one
//! stream per `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); the server
//! waits (up to 30 s) for every stream the request implies, runs the session, writes the outcome
//! on the error stream (v4+: `metav1.Status` JSON; older: text on failure), half-closes its
//! streams and ends the connection.

use super::protocol::RcVersion;
use super::remotecommand::{
    forward_resizes, run_backend, Outcome, StreamOpts, Target, DRAIN_TIMEOUT, PIPE_BUFFER, STREAM_CREATION_TIMEOUT,
};
use super::spdy::{Session, Stream};
use super::{Backend, Reader, SessionIo, TermSize, Writer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// How long the server waits for the client to close the connection after the status was sent.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The value of header `name` (SPDY header names are lower-case).
pub(crate) fn header<'a>(s: &'a Stream, name: &str) -> Option<&'a str> {
    s.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The stream types a request implies, as kubelet counts them.
pub fn expected_streams(version: RcVersion, opts: StreamOpts) -> Vec<&'static str> {
    let mut v = vec!["error"];
    if opts.stdin {
        v.push("stdin");
    }
    if opts.stdout {
        v.push("stdout");
    }
    if opts.effective_stderr() {
        v.push("stderr");
    }
    if opts.tty && version.has_resize() {
        v.push("resize");
    }
    v
}

/// Copies what the backend writes into `pipe` to `dst`, then half-closes `dst` (FIN).
fn spawn_pump(mut pipe: DuplexStream, mut dst: Stream) -> JoinHandle<Stream> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if dst.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = dst.shutdown().await;
        dst
    })
}

/// Serves one exec/attach session on an upgraded SPDY connection.
pub async fn serve<IO>(io: IO, version: RcVersion, target: Target, opts: StreamOpts, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (session, mut incoming) = Session::server(io);
    let expected = expected_streams(version, opts);
    let mut got: HashMap<String, Stream> = HashMap::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while !expected.iter().all(|t| got.contains_key(*t)) {
        tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => {
                    let ty = header(&s, "streamtype").unwrap_or("").to_ascii_lowercase();
                    if expected.contains(&ty.as_str()) && !got.contains_key(&ty) {
                        got.insert(ty, s);
                    } else {
                        tracing::debug!(stream_type = %ty, "SPDY remotecommand: unexpected stream ignored");
                    }
                }
                None => return,
            },
            () = &mut deadline => {
                tracing::info!(?expected, got = ?got.keys().collect::<Vec<_>>(), "SPDY remotecommand: timed out waiting for client to create streams");
                if let Some(mut e) = got.remove("error") {
                    let _ = e.write_all(b"timed out waiting for client to create streams").await;
                    let _ = e.shutdown().await;
                }
                session.close();
                return;
            }
        }
    }
    let Some(mut error) = got.remove("error") else { return };
    let mut io = SessionIo { stdin: None, stdout: None, stderr: None, resize: None };
    let mut pumps = Vec::new();
    if let Some(s) = got.remove("stdin") {
        io.stdin = Some(Box::new(s) as Reader);
    }
    for name in ["stdout", "stderr"] {
        if let Some(s) = got.remove(name) {
            let (proc_side, net_side) = tokio::io::duplex(PIPE_BUFFER);
            pumps.push(spawn_pump(net_side, s));
            let w: Writer = Box::new(proc_side);
            if name == "stdout" {
                io.stdout = Some(w);
            } else {
                io.stderr = Some(w);
            }
        }
    }
    let mut resize_task = None;
    if opts.tty {
        let (tx, rx) = tokio::sync::mpsc::channel::<TermSize>(8);
        io.resize = Some(rx);
        if let Some(s) = got.remove("resize") {
            resize_task = Some(tokio::spawn(forward_resizes(s, tx)));
        }
    }

    let outcome = tokio::select! {
        o = run_backend(backend, target, io) => Some(o),
        () = session.closed() => None,
    };
    let Some(outcome) = outcome else {
        tracing::debug!("SPDY remotecommand: client went away; session dropped");
        for p in pumps {
            p.abort();
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        return;
    };
    if let Outcome::Error(e) = &outcome {
        tracing::info!(error = %e, "SPDY remotecommand: backend failed");
    }
    let mut done_streams = Vec::new();
    for p in pumps {
        if let Ok(Ok(s)) = tokio::time::timeout(DRAIN_TIMEOUT, p).await {
            done_streams.push(s);
        }
    }
    if let Some(bytes) = outcome.error_stream_bytes(version) {
        let _ = error.write_all(&bytes).await;
    }
    let _ = error.shutdown().await;
    if let Some(t) = resize_task {
        t.abort();
    }
    session.goaway().await;
    let _ = tokio::time::timeout(CLIENT_CLOSE_GRACE, session.closed()).await;
    drop(done_streams);
    drop(error);
    session.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_stream_sets() {
        let o = StreamOpts { stdin: true, stdout: true, stderr: true, tty: true };
        assert_eq!(expected_streams(RcVersion::V4, o), vec!["error", "stdin", "stdout", "resize"]);
        assert_eq!(expected_streams(RcVersion::V2, o), vec!["error", "stdin", "stdout"]);
        let o = StreamOpts { stdin: false, stdout: true, stderr: true, tty: false };
        assert_eq!(expected_streams(RcVersion::V5, o), vec!["error", "stdout", "stderr"]);
    }
}
