//! The NRI connection multiplexer: one unix stream per plugin (the "trunk") carries two ttrpc
//! connections, as containerd/nri's `pkg/net/multiplex` frames them.
//!
//! Every frame is an 8-byte header, the logical connection's ID and the payload's length (both
//! u32, big-endian), then the payload: bytes of that connection's ttrpc stream. There is no
//! handshake and no open or close frame; a frame for an ID nobody listens on is dropped, and a
//! logical connection ends with the trunk. NRI uses two IDs ([`PLUGIN_SERVICE_CONN`]: the plugin
//! serves, the runtime calls; [`RUNTIME_SERVICE_CONN`]: the runtime serves RegisterPlugin and
//! UpdateContainers).
//!
//! [`split`] turns a trunk into two in-memory streams, one per logical connection, that the
//! `ttrpc` crate's client and server run on. Bytes written to one go out re-framed per ttrpc
//! message: the first frame holds the 10-byte ttrpc header and at most 4086 payload bytes, a
//! second one the rest. Go's demultiplexer returns one frame per read and fails a read whose
//! buffer is smaller than the frame; the Go ttrpc reader reads through a 4096-byte buffer except
//! when it asks for at least that much, which it does only for the rest of a message. Frames
//! cut this way are what Go's own writer sends, and always fit.

use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// The logical connection on which the plugin serves `nri.pkg.api.v1alpha1.Plugin` and the
/// runtime is the client (nri `multiplex.PluginServiceConn`).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The logical connection on which the runtime serves `nri.pkg.api.v1alpha1.Runtime` and the
/// plugin is the client (nri `multiplex.RuntimeServiceConn`).
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// A mux frame's header: connection ID and payload length, u32 big-endian each.
const FRAME_HEADER: usize = 8;
/// A ttrpc message's header: payload length (u32), stream ID (u32), type, flags.
const TTRPC_HEADER: usize = 10;
/// The largest ttrpc payload (ttrpc's `messageLengthMax`, 4 MiB).
const TTRPC_MAX: usize = 4 << 20;
/// The largest frame payload nri accepts: one whole ttrpc message.
const FRAME_MAX: usize = TTRPC_HEADER + TTRPC_MAX;
/// The size of the Go ttrpc reader's buffer: a frame that starts a message fits in it.
const GO_READ_BUFFER: usize = 4096;
/// Bytes buffered in each direction of a logical connection.
const PIPE: usize = 64 << 10;

/// The tasks moving a trunk's frames ([`split`]). Dropping it closes the trunk.
pub struct Trunk {
    closed_tx: Arc<watch::Sender<bool>>,
    closed: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Trunk {
    /// Resolves once the trunk is closed (the plugin hung up, sent a bad frame, or a write
    /// failed).
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the trunk is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Closes the trunk now: its tasks stop, which shuts the connection.
    pub fn close(&self) {
        let _ = self.closed_tx.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Trunk {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The two logical connections of a trunk, as in-memory streams.
pub struct Conns {
    /// [`PLUGIN_SERVICE_CONN`]: the runtime's ttrpc client runs here (a plugin's server).
    pub plugin_service: DuplexStream,
    /// [`RUNTIME_SERVICE_CONN`]: the runtime's ttrpc server runs here (a plugin's client).
    pub runtime_service: DuplexStream,
}

/// Splits `stream` into its two logical connections and starts the tasks that move frames
/// (one reader, one writer per connection). They end, closing the trunk, on the first I/O
/// error, on a frame longer than a ttrpc message, on a ttrpc message longer than 4 MiB written
/// locally, or when the [`Trunk`] is dropped.
pub fn split(stream: UnixStream) -> (Trunk, Conns) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let (closed_tx, closed) = watch::channel(false);
    let closed_tx = Arc::new(closed_tx);
    let (plugin_local, plugin_remote) = tokio::io::duplex(PIPE);
    let (runtime_local, runtime_remote) = tokio::io::duplex(PIPE);
    let (plugin_rd, plugin_wr) = tokio::io::split(plugin_remote);
    let (runtime_rd, runtime_wr) = tokio::io::split(runtime_remote);
    let mut tasks = Vec::new();
    {
        let closed_tx = closed_tx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = demux(&mut rd, plugin_wr, runtime_wr).await {
                tracing::debug!(error = %e, "NRI trunk: read side ended");
            }
            let _ = closed_tx.send(true);
        }));
    }
    for (id, from) in [(PLUGIN_SERVICE_CONN, plugin_rd), (RUNTIME_SERVICE_CONN, runtime_rd)] {
        let (wr, closed_tx) = (wr.clone(), closed_tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = remux(id, from, &wr).await {
                tracing::debug!(conn = id, error = %e, "NRI trunk: write side ended");
            }
            let _ = wr.lock().await.shutdown().await;
            let _ = closed_tx.send(true);
        }));
    }
    (Trunk { closed_tx, closed, tasks }, Conns { plugin_service: plugin_local, runtime_service: runtime_local })
}

/// Reads frames off the trunk into the logical connections until the trunk ends.
async fn demux(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    mut plugin: WriteHalf<DuplexStream>,
    mut runtime: WriteHalf<DuplexStream>,
) -> io::Result<()> {
    let mut header = [0u8; FRAME_HEADER];
    let mut payload = Vec::new();
    loop {
        rd.read_exact(&mut header).await?;
        let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > FRAME_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes for connection {conn}; at most {FRAME_MAX}"),
            ));
        }
        payload.resize(len, 0);
        rd.read_exact(&mut payload).await?;
        match conn {
            PLUGIN_SERVICE_CONN => plugin.write_all(&payload).await?,
            RUNTIME_SERVICE_CONN => runtime.write_all(&payload).await?,
            // As nri's demultiplexer: a frame for a connection nobody opened is dropped.
            other => tracing::debug!(conn = other, len, "NRI trunk: frame for an unknown connection dropped"),
        }
    }
}

/// Moves the ttrpc messages written on one logical connection onto the trunk, framed as the
/// module docs say, until that connection ends.
async fn remux(conn: u32, mut from: ReadHalf<DuplexStream>, wr: &Mutex<OwnedWriteHalf>) -> io::Result<()> {
    let mut message = Vec::new();
    loop {
        let mut header = [0u8; TTRPC_HEADER];
        match from.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > TTRPC_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("ttrpc message of {len} bytes; at most {TTRPC_MAX}")));
        }
        message.clear();
        message.extend_from_slice(&header);
        message.resize(TTRPC_HEADER + len, 0);
        from.read_exact(&mut message[TTRPC_HEADER..]).await?;
        let first = message.len().min(GO_READ_BUFFER);
        let mut w = wr.lock().await;
        for part in [&message[..first], &message[first..]] {
            if part.is_empty() {
                continue;
            }
            let mut frame = Vec::with_capacity(FRAME_HEADER + part.len());
            frame.extend_from_slice(&conn.to_be_bytes());
            frame.extend_from_slice(&(part.len() as u32).to_be_bytes());
            frame.extend_from_slice(part);
            w.write_all(&frame).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(conn: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = conn.to_be_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ttrpc_message(stream: u32, payload_len: usize) -> Vec<u8> {
        let mut m = (payload_len as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&stream.to_be_bytes());
        m.extend_from_slice(&[1, 0]);
        m.extend((0..payload_len).map(|i| i as u8));
        m
    }

    /// Frames from the peer reach their logical connection, unknown IDs are dropped; messages
    /// written locally go out one frame per message when small, two (4096 bytes, then the
    /// rest) when large.
    #[tokio::test]
    async fn frames_in_and_messages_out() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (trunk, conns) = split(ours);
        let (mut runtime, mut plugin) = (conns.runtime_service, conns.plugin_service);

        peer.write_all(&frame(7, b"nobody")).await.unwrap();
        peer.write_all(&frame(RUNTIME_SERVICE_CONN, b"hello ")).await.unwrap();
        peer.write_all(&frame(RUNTIME_SERVICE_CONN, b"world")).await.unwrap();
        peer.write_all(&frame(PLUGIN_SERVICE_CONN, b"other")).await.unwrap();
        let mut got = [0u8; 11];
        runtime.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        let mut got = [0u8; 5];
        plugin.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"other");

        let small = ttrpc_message(1, 100);
        let big = ttrpc_message(3, 10_000);
        plugin.write_all(&small).await.unwrap();
        plugin.write_all(&big[..5]).await.unwrap();
        plugin.write_all(&big[5..]).await.unwrap();
        async fn read_frame(peer: &mut UnixStream) -> (u32, Vec<u8>) {
            let mut h = [0u8; 8];
            peer.read_exact(&mut h).await.unwrap();
            let conn = u32::from_be_bytes(h[..4].try_into().unwrap());
            let mut p = vec![0u8; u32::from_be_bytes(h[4..].try_into().unwrap()) as usize];
            peer.read_exact(&mut p).await.unwrap();
            (conn, p)
        }
        assert_eq!(read_frame(&mut peer).await, (PLUGIN_SERVICE_CONN, small));
        let (conn, first) = read_frame(&mut peer).await;
        assert_eq!((conn, first.len()), (PLUGIN_SERVICE_CONN, 4096), "the first frame fits Go's 4096-byte read");
        let (_, rest) = read_frame(&mut peer).await;
        assert_eq!([first, rest].concat(), big);

        drop(peer);
        tokio::time::timeout(std::time::Duration::from_secs(5), trunk.closed()).await.expect("the trunk sees the peer hang up");
        assert!(trunk.is_closed());
    }

    #[tokio::test]
    async fn close_ends_the_connection() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (trunk, _conns) = split(ours);
        assert!(!trunk.is_closed());
        trunk.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), trunk.closed()).await.expect("closed() resolves");
        assert!(trunk.is_closed());
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.read(&mut b)).await.expect("the peer sees EOF").unwrap();
        assert_eq!(n, 0, "the peer's read ends");
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_trunk() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (trunk, _conns) = split(ours);
        let mut h = RUNTIME_SERVICE_CONN.to_be_bytes().to_vec();
        h.extend_from_slice(&((FRAME_MAX + 1) as u32).to_be_bytes());
        peer.write_all(&h).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), trunk.closed()).await.expect("closed");
    }
}
