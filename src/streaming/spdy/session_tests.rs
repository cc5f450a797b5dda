//! Session tests over `tokio::io::duplex`: both roles of this crate, and a raw-frame peer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::frame::{self, rst, Frame, FLAG_FIN};
use super::header::{HeaderCompressor, HeaderDecompressor};
use super::{Session, SpdyError};

const T: Duration = Duration::from_secs(60);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32 % 31) as u8 ^ seed).collect()
}

fn pair() -> (Session, tokio::sync::mpsc::Receiver<super::Stream>, Session) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, accept) = Session::server(a);
    let client = Session::client(b);
    (server, accept, client)
}

fn hv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_streams_ten_mib_each_way() {
    let (server, mut accept, client) = pair();
    const N: usize = 4;
    const LEN: usize = 10 * 1024 * 1024;
    let srv = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..N {
            let s = accept.recv().await.expect("accepted stream");
            tasks.push(tokio::spawn(async move {
                let seed: u8 = s.header("seed").expect("seed header").parse().expect("seed");
                let (mut r, mut w) = s.split();
                let writer = tokio::spawn(async move {
                    w.write_all(&pattern(seed.wrapping_add(100), LEN)).await.expect("server write");
                    w.shutdown().await.expect("server fin");
                    w
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.expect("server read");
                assert!(got == pattern(seed, LEN), "server got the client's bytes on stream {seed}");
                let _w = writer.await.expect("writer");
            }));
        }
        for t in tasks {
            t.await.expect("server stream task");
        }
    });
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let seed = i as u8 + 1;
            let s = client.open_stream(hv(&[("seed", &seed.to_string()), ("StreamType", "data")]), false).await.expect("open");
            assert_eq!(s.id % 2, 1, "client ids are odd");
            let (mut r, mut w) = s.split();
            let writer = tokio::spawn(async move {
                w.write_all(&pattern(seed, LEN)).await.expect("client write");
                w.shutdown().await.expect("client fin");
                w
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("client read");
            assert!(got == pattern(seed.wrapping_add(100), LEN), "client got the server's bytes on stream {seed}");
            let _w = writer.await.expect("writer");
        }));
    }
    timeout(T, async {
        for t in tasks {
            t.await.expect("client stream task");
        }
        srv.await.expect("server");
    })
    .await
    .expect("10 MiB each way in time");
    assert!(server.ping().await.is_ok());
    client.goaway().await;
    timeout(T, async { tokio::join!(client.closed(), server.closed()) }).await.expect("both sides close after GOAWAY");
}

#[tokio::test]
async fn fin_reset_and_headers() {
    let (server, mut accept, client) = pair();
    // FIN on SYN_STREAM: the server sees EOF at once and can still answer.
    let c = client.open_stream(hv(&[("streamtype", "error")]), true).await.expect("open");
    let mut s = accept.recv().await.expect("accept");
    assert_eq!(s.header("streamtype"), Some("error"));
    let mut buf = Vec::new();
    assert_eq!(s.read_to_end(&mut buf).await.expect("eof"), 0);
    s.write_all(b"status").await.expect("write");
    s.shutdown().await.expect("fin");
    let mut c = c;
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"status");
    assert!(c.write_all(b"x").await.is_err(), "writing after our FIN fails");
    // RST with an error status: both reader and writer of the other side get errors.
    let mut c2 = client.open_stream(hv(&[("streamtype", "stdout")]), false).await.expect("open");
    let s2 = accept.recv().await.expect("accept");
    s2.reset(rst::INTERNAL_ERROR);
    let e = c2.read(&mut [0u8; 8]).await.expect_err("read after RST");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(c2.write_all(b"x").await.is_err());
    // RST CANCEL right after data (what kubelet-style servers do after writing the exit status):
    // the data is still read, then EOF, as moby/spdystream delivers it; writing fails.
    let mut c3 = client.open_stream(hv(&[("streamtype", "error")]), false).await.expect("open");
    let mut s3 = accept.recv().await.expect("accept");
    s3.write_all(b"exit status").await.expect("write");
    s3.flush().await.expect("flush");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s3.reset(rst::CANCEL);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut got = Vec::new();
    c3.read_to_end(&mut got).await.expect("data then EOF after a peer CANCEL");
    assert_eq!(got, b"exit status");
    assert!(c3.write_all(b"x").await.is_err(), "writing after the peer reset fails");
    // Server-opened streams use even ids (the client refuses them: it has no acceptor).
    let e = server.open_stream(hv(&[("a", "b")]), false).await.expect_err("client refuses");
    assert!(matches!(e, SpdyError::Reset { status: rst::REFUSED_STREAM, .. }), "{e}");
    assert!(client.ping().await.is_ok());
    assert!(server.ping().await.is_ok());
}

#[tokio::test]
async fn goaway_lets_streams_finish_then_closes() {
    let (server, mut accept, client) = pair();
    let mut c = client.open_stream(hv(&[("x", "1")]), false).await.expect("open");
    let mut s = accept.recv().await.expect("accept");
    server.goaway().await;
    // wait until the client saw it
    timeout(T, async {
        loop {
            match client.open_stream(hv(&[]), false).await {
                Err(SpdyError::GoingAway) => break,
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("client sees GOAWAY");
    assert!(!server.is_closed(), "the open stream keeps the session up");
    c.write_all(b"still works").await.expect("write");
    c.shutdown().await.expect("fin");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"still works");
    s.shutdown().await.expect("fin");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("eof");
    timeout(T, async { tokio::join!(client.closed(), server.closed()) }).await.expect("closed after last stream");
}

/// A peer driven frame by frame.
struct RawPeer {
    io: DuplexStream,
    comp: HeaderCompressor,
    dec: HeaderDecompressor,
    buf: Vec<u8>,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        Self { io, comp: HeaderCompressor::new().expect("comp"), dec: HeaderDecompressor::new(), buf: Vec::new() }
    }
    async fn send(&mut self, f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out).expect("encode");
        self.io.write_all(&out).await.expect("raw write");
    }
    async fn syn(&mut self, id: u32, headers: &[(&str, &str)], flags: u8) {
        let header_block = self.comp.compress(&hv(headers)).expect("compress");
        self.send(Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, slot: 0, flags, header_block }).await;
    }
    /// Next frame other than WINDOW_UPDATE/SETTINGS, or None at EOF.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match frame::parse(&self.buf, frame::MAX_FRAME_LEN).expect("valid frame from the session") {
                Some((f, n)) => {
                    self.buf.drain(..n);
                    match f {
                        Frame::WindowUpdate { .. } | Frame::Settings { .. } => continue,
                        Frame::SynReply { ref header_block, .. } | Frame::SynStream { ref header_block, .. } => {
                            self.dec.decompress(header_block).expect("header block");
                            return Some(f);
                        }
                        f => return Some(f),
                    }
                }
                None => {
                    let mut chunk = [0u8; 65536];
                    let n = self.io.read(&mut chunk).await.expect("raw read");
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

fn raw_pair() -> (Session, tokio::sync::mpsc::Receiver<super::Stream>, RawPeer) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (server, accept) = Session::server(a);
    (server, accept, RawPeer::new(b))
}

#[tokio::test]
async fn peer_without_flow_control_still_gets_everything() {
    // moby/spdystream never sends WINDOW_UPDATE: after the grace period the server must go on.
    let (_server, mut accept, mut peer) = raw_pair();
    peer.syn(1, &[("streamtype", "stdout")], FLAG_FIN).await;
    let mut s = accept.recv().await.expect("accept");
    let len = 1024 * 1024;
    let data = pattern(7, len);
    let writer = tokio::spawn(async move {
        s.write_all(&data).await.expect("write past the window");
        s.shutdown().await.expect("fin");
        s
    });
    let mut got = Vec::new();
    timeout(T, async {
        loop {
            match peer.next().await.expect("frame") {
                Frame::SynReply { stream_id: 1, .. } => {}
                Frame::Data { stream_id: 1, flags, data } => {
                    got.extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("data in time");
    assert!(got == pattern(7, len));
    let _s = writer.await.expect("writer");
}

#[tokio::test]
async fn peer_overrunning_window_is_slowed_not_buffered() {
    // The peer sends 4 MiB at once on a stream nobody reads: the session must stop reading
    // (bounded buffer) yet deliver all of it once the application reads.
    let (_server, mut accept, mut peer) = raw_pair();
    peer.syn(1, &[("streamtype", "stdin")], 0).await;
    let mut s = accept.recv().await.expect("accept");
    let data = pattern(3, 4 << 20);
    let (mut rd, mut wr) = tokio::io::split(peer.io);
    let sender = tokio::spawn(async move {
        for chunk in data.chunks(16 * 1024) {
            let mut out = Vec::new();
            Frame::Data { stream_id: 1, flags: 0, data: chunk.to_vec() }.encode(&mut out).expect("encode");
            wr.write_all(&out).await.expect("write");
        }
        let mut out = Vec::new();
        Frame::Data { stream_id: 1, flags: FLAG_FIN, data: vec![] }.encode(&mut out).expect("encode");
        wr.write_all(&out).await.expect("write");
        wr
    });
    let drain = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let st = s.shared.lock();
        let buffered = st.streams.get(&1).map_or(0, |x| x.recv_len);
        assert!(buffered <= 64 * 1024 + 16 * 1024, "buffer bounded by the window: {buffered}");
    }
    assert!(!sender.is_finished(), "the peer is held back by TCP-like backpressure");
    let mut got = Vec::new();
    timeout(T, s.read_to_end(&mut got)).await.expect("in time").expect("read");
    assert!(got == pattern(3, 4 << 20));
    let _wr = sender.await.expect("sender");
    drain.abort();
}

#[tokio::test]
async fn hostile_and_unknown_frames() {
    let (server, _accept, mut peer) = raw_pair();
    // DATA for a stream never opened -> RST_STREAM INVALID_STREAM, session stays up.
    peer.send(Frame::Data { stream_id: 9, flags: 0, data: b"x".to_vec() }).await;
    assert_eq!(peer.next().await, Some(Frame::RstStream { stream_id: 9, status: rst::INVALID_STREAM }));
    // Unknown control types are ignored; PING is answered.
    let mut out = Vec::new();
    out.extend_from_slice(&[0x80, 3, 0, 10, 0, 0, 0, 3, 1, 2, 3]);
    peer.io.write_all(&out).await.expect("write");
    peer.send(Frame::Ping { id: 5 }).await;
    assert_eq!(peer.next().await, Some(Frame::Ping { id: 5 }));
    // A wrong version ends the session with GOAWAY PROTOCOL_ERROR.
    peer.io.write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).await.expect("write");
    assert!(matches!(peer.next().await, Some(Frame::GoAway { status: frame::goaway::PROTOCOL_ERROR, .. })));
    assert_eq!(peer.next().await, None, "then the connection closes");
    timeout(T, server.closed()).await.expect("closed");
}

#[tokio::test]
async fn bad_header_block_and_wrong_parity_end_the_session() {
    let (server, _accept, mut peer) = raw_pair();
    peer.send(Frame::SynStream { stream_id: 1, associated_id: 0, priority: 0, slot: 0, flags: 0, header_block: b"garbage".to_vec() }).await;
    assert!(matches!(peer.next().await, Some(Frame::GoAway { status: frame::goaway::PROTOCOL_ERROR, .. })));
    timeout(T, server.closed()).await.expect("closed");

    let (server, _accept, mut peer) = raw_pair();
    peer.syn(2, &[("a", "b")], 0).await;
    assert!(matches!(peer.next().await, Some(Frame::GoAway { status: frame::goaway::PROTOCOL_ERROR, .. })));
    timeout(T, server.closed()).await.expect("closed");
}

#[tokio::test]
async fn vanished_peer_ends_every_stream() {
    let (server, mut accept, mut peer) = raw_pair();
    peer.syn(1, &[("streamtype", "stdin")], 0).await;
    peer.syn(3, &[("streamtype", "stdout")], 0).await;
    let mut a = accept.recv().await.expect("accept");
    let mut b = accept.recv().await.expect("accept");
    peer.send(Frame::Data { stream_id: 1, flags: 0, data: b"partial".to_vec() }).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(peer);
    timeout(T, server.closed()).await.expect("closed() returns");
    let mut got = [0u8; 7];
    a.read_exact(&mut got).await.expect("buffered data still readable");
    assert_eq!(&got, b"partial");
    assert!(a.read(&mut [0u8; 1]).await.is_err(), "then an error, not a clean EOF");
    assert!(b.write_all(b"x").await.is_err());
    assert!(server.open_stream(hv(&[]), false).await.is_err());
    assert_eq!(std::sync::Arc::strong_count(&server.shared), 3, "tasks released the session (server, a, b)");
}

/// Interop with an independent SPDY/3.1 implementation: node's `spdy-transport` as client
/// (tests/spdy-interop/client.js) against a `Session::server` on a loopback TCP socket.
/// Skipped, with a message, when node/npm are absent or the package cannot be installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_node_spdy_transport() {
    use std::process::Command;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spdy-interop");
    if Command::new("node").arg("--version").output().is_err() || Command::new("npm").arg("--version").output().is_err() {
        eprintln!("SKIP interop_with_node_spdy_transport: node/npm not found");
        return;
    }
    let dir = std::env::temp_dir().join("berth-spdy-interop");
    std::fs::create_dir_all(&dir).expect("interop dir");
    for f in ["package.json", "client.js"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy interop file");
    }
    if !dir.join("node_modules/spdy-transport").exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP interop_with_node_spdy_transport: npm install spdy-transport failed");
            return;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let (streams, bytes) = (4usize, 300 * 1024usize);
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        let (session, mut accept) = Session::server(sock);
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let s = accept.recv().await.expect("stream from node");
            assert_eq!(s.header("streamtype"), Some("data"), "headers: {:?}", s.headers);
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = r.read(&mut buf).await.expect("read from node");
                    if n == 0 {
                        break;
                    }
                    let out: Vec<u8> = buf[..n].iter().map(|b| b ^ 0x5a).collect();
                    w.write_all(&out).await.expect("write to node");
                }
                w.shutdown().await.expect("fin to node");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }));
        }
        for t in tasks {
            t.await.expect("stream task");
        }
        session
    });
    let child = tokio::process::Command::new("node")
        .arg(dir.join("client.js"))
        .args([port.to_string(), streams.to_string(), bytes.to_string()])
        .output();
    let out = timeout(T, child).await.expect("node in time").expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("OK"), "node client: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let session = timeout(T, server).await.expect("server in time").expect("server task");
    timeout(T, session.closed()).await.expect("node closed the connection");
}
