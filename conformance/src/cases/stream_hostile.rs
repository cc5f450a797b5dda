//! Hostile input against a live streaming server (berth only): garbage instead of HTTP and
//! malformed SPDY/3.1 after a valid upgrade. Each connection must end (EOF, RST_STREAM or
//! GOAWAY) within [`END_LIMIT`]; afterwards the daemon still answers Version and a normal exec,
//! its RSS has not grown by more than [`RSS_SLACK_KIB`], and no exec monitor was left behind.

use super::util::check;
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use crate::stream_client::{self as sc, Session, Transport};
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth::streaming::client as up;
use berth::streaming::spdy::frame::{self, Frame};
use berth::streaming::spdy::header::HeaderCompressor;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a hostile connection may stay open after its input.
const END_LIMIT: Duration = Duration::from_secs(10);
/// Allowed growth of the daemon's VmRSS over all rounds.
const RSS_SLACK_KIB: u64 = 6 * 1024;
/// Rounds of the whole hostile set (leaks add up across rounds).
const ROUNDS: usize = 3;

/// How a hostile connection ended.
#[derive(Debug)]
enum End {
    /// The server closed the connection (EOF or reset) after sending these frames.
    Closed(Vec<String>),
    /// The server sent RST_STREAM, GOAWAY or an HTTP error response (named) and we stopped
    /// waiting.
    Frame(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Closed(f) if f.is_empty() => "closed".into(),
            End::Closed(f) => format!("closed after {}", f.join(", ")),
            End::Frame(f) => f.clone(),
        }
    }
}

/// Reads what the server sends until EOF, a read error, or a RST_STREAM/GOAWAY; fails when
/// none of these comes within [`END_LIMIT`]. `spdy`: parse the bytes as SPDY frames.
async fn wait_end(tcp: &mut TcpStream, spdy: bool, what: &str) -> Result<End> {
    let deadline = Instant::now() + END_LIMIT;
    let (mut buf, mut seen) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Err(_) => bail!(
                "{what}: the server neither closed the connection nor sent RST_STREAM/GOAWAY within {END_LIMIT:?} (frames seen: {seen:?})"
            ),
            Ok(Err(_)) | Ok(Ok(0)) => return Ok(End::Closed(seen)),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if !spdy {
            // A complete error response ends it too (the connection may stay open for keep-alive).
            let text = String::from_utf8_lossy(&buf);
            if text.starts_with("HTTP/1.") && text.contains("\r\n\r\n") && !text.starts_with("HTTP/1.1 101") {
                return Ok(End::Frame(text.lines().next().unwrap_or_default().to_string()));
            }
            continue;
        }
        while let Ok(Some((f, used))) = frame::parse(&buf, frame::MAX_FRAME_LEN) {
            buf.drain(..used);
            match f {
                Frame::RstStream { stream_id, status } => return Ok(End::Frame(format!("RST_STREAM {stream_id} status {status}"))),
                Frame::GoAway { status, .. } => return Ok(End::Frame(format!("GOAWAY status {status}"))),
                other => seen.push(format!("{other:?}").chars().take(60).collect()),
            }
        }
    }
}

fn encode(f: &Frame) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    f.encode(&mut out)?;
    Ok(out)
}

fn syn_stream(id: u32, header_block: Vec<u8>) -> Frame {
    Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, slot: 0, flags: 0, header_block }
}

/// The hostile inputs after a valid SPDY upgrade: (name, bytes to send, half-close after).
fn spdy_inputs() -> Result<Vec<(&'static str, Vec<u8>, bool)>> {
    let mut z = HeaderCompressor::new()?;
    let good = z.compress(&[("streamtype".into(), "error".into())])?;
    let mut v = Vec::new();
    // A SYN_STREAM announcing 200 bytes, 20 sent, then FIN on the TCP connection.
    let mut truncated = encode(&syn_stream(1, good.clone()))?;
    truncated[5..8].copy_from_slice(&[0, 0, 200]);
    truncated.truncate(8 + 12);
    v.push(("truncated SYN_STREAM", truncated, true));
    // Half a frame header.
    v.push(("truncated frame header", vec![0x80, 0x03, 0x00], true));
    // A header block that is not zlib at all, and one that is zlib with a wrong dictionary id.
    v.push(("SYN_STREAM with a non-zlib header block", encode(&syn_stream(1, b"this is not zlib data at all".to_vec()))?, false));
    v.push((
        "SYN_STREAM with a wrong zlib dictionary",
        encode(&syn_stream(1, vec![0x78, 0xbb, 0x12, 0x34, 0x56, 0x78, 0x01, 0x02]))?,
        false,
    ));
    // Zip bomb: one 64 MiB header value, about 64 KiB compressed.
    let bomb = HeaderCompressor::new()?.compress(&[("streamtype".into(), "a".repeat(64 << 20))])?;
    v.push(("SYN_STREAM with a 64 MiB zip-bomb header block", encode(&syn_stream(1, bomb))?, false));
    // Version 2 instead of 3.
    let mut v2 = encode(&syn_stream(1, good.clone()))?;
    v2[1] = 2;
    v.push(("SYN_STREAM of version 2", v2, false));
    // The largest length the 24-bit field can say: a DATA frame of 16 MiB - 1 on a stream that
    // was never opened, sent in full; and a PING (payload 4 bytes by definition) claiming it.
    let len = frame::MAX_FRAME_LEN;
    let mut big = vec![0, 0, 0, 1, 0, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    big.resize(8 + len, 0x5a);
    v.push(("DATA of 16 MiB - 1 on an unopened stream", big, false));
    let mut ping = encode(&Frame::Ping { id: 1 })?;
    ping[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    v.push(("PING claiming 16 MiB - 1 bytes, then FIN", ping, true));
    // DATA on a stream id nobody opened.
    v.push(("DATA on unknown stream 99", encode(&Frame::Data { stream_id: 99, flags: 0, data: b"hello".to_vec() })?, false));
    // Stream id 0 in DATA, and a SYN_STREAM flood past the concurrent-stream limit.
    v.push(("DATA on stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, 0], false));
    let mut flood = Vec::new();
    let mut z = HeaderCompressor::new()?;
    for i in 0..1200u32 {
        flood.extend(encode(&syn_stream(2 * i + 1, z.compress(&[("streamtype".into(), "bogus".into())])?))?);
    }
    v.push(("1200 SYN_STREAMs of an unknown streamType", flood, false));
    Ok(v)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// PIDs of `berth-monitor` processes whose command line names the suite's temp dir.
fn monitors(ctx: &Ctx) -> Vec<i32> {
    let needle = ctx.tmp.display().to_string();
    crate::proc::pids_mentioning(&needle).into_iter().filter(|(_, cmd)| cmd.contains("berth-monitor")).map(|(p, _)| p).collect()
}

async fn exec_url(ctx: &Ctx, id: &str) -> Result<String> {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: vec!["echo".into(), "ok".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    };
    Ok(ctx.rt().exec(req).await.context("Exec")?.into_inner().url)
}

/// A normal exec over SPDY v4 must still print `ok` and exit 0.
async fn normal_exec(ctx: &Ctx, id: &str) -> Result<()> {
    let url = exec_url(ctx, id).await?;
    let o = sc::remotecommand(&url, Transport::Spdy("v4.channel.k8s.io"), &Session { stderr: true, ..Default::default() })
        .await
        .context("normal exec")?;
    check(o.stdout == b"ok\n" && o.exit_code()? == 0, || {
        format!("normal exec: stdout {:?}, status {:?}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.error))
    })
}

/// One round: garbage HTTP, then every SPDY input on its own freshly upgraded connection.
async fn round(ctx: &Ctx, id: &str, log: &mut Vec<String>) -> Result<()> {
    let url = exec_url(ctx, id).await?;
    let host = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    // CONFORMANCE_HOSTILE_ONLY=substring runs only the matching inputs (to find which one leaks).
    let only = std::env::var("CONFORMANCE_HOSTILE_ONLY").unwrap_or_default();
    for (name, bytes) in [
        ("garbage instead of an HTTP request", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec()),
        ("an HTTP request line of 1 MiB", [b"GET /".to_vec(), vec![b'a'; 1 << 20], b" HTTP/1.1\r\n\r\n".to_vec()].concat()),
        ("an upgrade to an unknown exec token", format!("GET /exec/AAAAAAAA HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").into_bytes()),
    ] {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut tcp = TcpStream::connect(&host).await.with_context(|| format!("connect {host}"))?;
        // The server may close before reading everything (the 1 MiB line): that is fine.
        let _ = tcp.write_all(&bytes).await;
        let end = wait_end(&mut tcp, false, name).await?;
        log.push(format!("{name}: {}", end.describe()));
    }
    for (name, bytes, fin) in spdy_inputs()? {
        if !name.contains(only.as_str()) {
            continue;
        }
        let url = exec_url(ctx, id).await?;
        let mut tcp =
            up::upgrade(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")])
                .await
                .with_context(|| format!("{name}: upgrade"))?
                .tcp;
        let _ = tcp.write_all(&bytes).await;
        if fin {
            let _ = tcp.shutdown().await;
        }
        let end = wait_end(&mut tcp, true, name).await?;
        log.push(format!("{name}: {}", end.describe()));
    }
    Ok(())
}

/// The whole hostile set, [`ROUNDS`] times, against berth's streaming server; then Version,
/// a normal exec, the RSS bound and no leftover exec monitors.
pub async fn hostile_input(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("daemon-level hostile input is checked on berth only");
    }
    let pid = ctx.daemon_pid().await.context("no daemon pid")?;
    let pod = ctx.run_pod("stream-hostile").await?;
    let id = ctx.start_container(&pod, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    // Warm up the paths (allocator arenas, session code) before the baseline.
    normal_exec(ctx, &id).await?;
    let mut log = Vec::new();
    round(ctx, &id, &mut log).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let monitors_before = monitors(ctx).len();
    let rss_before = vm_rss_kib(pid).context("daemon VmRSS")?;
    for r in 1..ROUNDS {
        round(ctx, &id, &mut log).await?;
        eprintln!("note: daemon VmRSS after round {}: {:?} KiB", r + 1, vm_rss_kib(pid));
    }
    ctx.rt().version(cri::VersionRequest { version: "v1".into() }).await.context("Version after hostile input")?;
    normal_exec(ctx, &id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = vm_rss_kib(pid).context("daemon VmRSS")?;
    let monitors_after = monitors(ctx).len();
    for l in log.iter().take(log.len() / ROUNDS) {
        eprintln!("note: {l}");
    }
    eprintln!("note: daemon VmRSS {rss_before} KiB before rounds 2..{ROUNDS}, {rss_after} KiB after");
    check(rss_after <= rss_before + RSS_SLACK_KIB, || {
        format!(
            "daemon VmRSS grew from {rss_before} KiB to {rss_after} KiB over {} hostile rounds (limit +{RSS_SLACK_KIB} KiB)",
            ROUNDS - 1
        )
    })?;
    check(monitors_after <= monitors_before, || {
        format!("{monitors_before} berth-monitor processes before the hostile rounds, {monitors_after} after (exec sessions left behind)")
    })?;
    ctx.remove_pod(&pod.id).await
}
