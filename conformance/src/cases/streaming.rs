//! Exec, Attach and PortForward through the streaming server, on SPDY v4/v5 (what kubelet and
//! crictl speak) and WebSocket v4/v5 (kubectl ≥ 1.30). Each case skips on a runtime whose
//! Exec/Attach/PortForward RPC answers Unimplemented.

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use crate::stream_client::{self as sc, Session, Transport};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

const REMOTECOMMAND: [Transport; 4] = [
    Transport::Spdy("v4.channel.k8s.io"),
    Transport::Spdy("v5.channel.k8s.io"),
    Transport::WebSocket("v4.channel.k8s.io"),
    Transport::WebSocket("v5.channel.k8s.io"),
];

/// Runs one session; on a runtime other than berth, a transport the server refuses at upgrade
/// time (containerd 1.6 predates WebSocket v5) is noted and skipped (`Ok(None)`).
async fn session(ctx: &Ctx, url: &str, t: Transport, s: &Session) -> Result<Option<sc::Output>> {
    match sc::remotecommand(url, t, s).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if ctx.kind != TargetKind::Berth && optional_failure(&e) => {
            eprintln!("note: {t:?} not offered by this runtime: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context(format!("{t:?}"))),
    }
}

fn optional_failure(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("server answered 4") || text.contains("server negotiated")
}

fn unimplemented<T>(r: Result<T, tonic::Status>, what: &str) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(anyhow::anyhow!("{what}: {s}")),
    }
}

async fn exec_url(ctx: &Ctx, id: &str, cmd: &[&str], s: &Session) -> Result<Option<String>> {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        tty: s.tty,
        stdin: s.stdin.is_some(),
        stdout: true,
        stderr: s.stderr && !s.tty,
    };
    Ok(unimplemented(ctx.rt().exec(req).await, "Exec")?.map(|r| r.into_inner().url))
}

async fn sleeper(ctx: &Ctx, name: &str) -> Result<(Pod, String)> {
    let pod = ctx.run_pod(name).await?;
    let id = ctx.start_container(&pod, name, &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    Ok((pod, id))
}

/// Exec `sh -c 'echo out; echo err >&2; exit 3'`: stdout, stderr and exit code 3 in the status.
pub async fn exec_exit_code(ctx: &Ctx) -> Result<()> {
    let (pod, id) = sleeper(ctx, "stream-exit").await?;
    let s = Session { stderr: true, ..Default::default() };
    for t in REMOTECOMMAND {
        let Some(url) = exec_url(ctx, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"], &s).await? else {
            ctx.remove_pod(&pod.id).await?;
            return skip("Exec is Unimplemented on this runtime");
        };
        let Some(o) = session(ctx, &url, t, &s).await? else { continue };
        check(o.stdout == b"out\n", || format!("{t:?}: stdout {:?}", String::from_utf8_lossy(&o.stdout)))?;
        check(o.stderr == b"err\n", || format!("{t:?}: stderr {:?}", String::from_utf8_lossy(&o.stderr)))?;
        let code = o.exit_code().with_context(|| format!("{t:?}"))?;
        check(code == 3, || format!("{t:?}: exit code {code}, expected 3"))?;
    }
    ctx.remove_pod(&pod.id).await
}

/// Exec with stdin: `cat` ends on stdin EOF (SPDY FIN, WebSocket v5 close signal); on
/// WebSocket v4 (no half-close) a command that reads one line.
pub async fn exec_stdin(ctx: &Ctx) -> Result<()> {
    let (pod, id) = sleeper(ctx, "stream-stdin").await?;
    for t in REMOTECOMMAND {
        let v4_ws = t == Transport::WebSocket("v4.channel.k8s.io");
        let cmd: &[&str] = if v4_ws { &["sh", "-c", "read l; echo got $l"] } else { &["cat"] };
        let s = Session { stdin: Some(b"hello stdin\n".to_vec()), close_stdin: !v4_ws, stderr: true, ..Default::default() };
        let Some(url) = exec_url(ctx, &id, cmd, &s).await? else {
            ctx.remove_pod(&pod.id).await?;
            return skip("Exec is Unimplemented on this runtime");
        };
        let Some(o) = session(ctx, &url, t, &s).await? else { continue };
        let want: &[u8] = if v4_ws { b"got hello stdin\n" } else { b"hello stdin\n" };
        check(o.stdout == want, || format!("{t:?}: stdout {:?}", String::from_utf8_lossy(&o.stdout)))?;
        check(o.exit_code()? == 0, || format!("{t:?}: status {:?}", String::from_utf8_lossy(&o.error)))?;
    }
    ctx.remove_pod(&pod.id).await
}

/// A tty exec sees a terminal of the size the client sent first.
pub async fn exec_tty(ctx: &Ctx) -> Result<()> {
    let (pod, id) = sleeper(ctx, "stream-tty").await?;
    for t in [Transport::Spdy("v4.channel.k8s.io"), Transport::WebSocket("v5.channel.k8s.io")] {
        let s = Session { tty: true, resize: Some((100, 30)), ..Default::default() };
        let Some(url) = exec_url(ctx, &id, &["sh", "-c", "sleep 1; stty size; tty"], &s).await? else {
            ctx.remove_pod(&pod.id).await?;
            return skip("Exec is Unimplemented on this runtime");
        };
        let Some(o) = session(ctx, &url, t, &s).await? else { continue };
        let text = String::from_utf8_lossy(&o.stdout).replace('\r', "");
        check(text.contains("30 100"), || format!("{t:?}: stty size said {text:?}, expected 30 rows 100 columns"))?;
        check(text.contains("/dev/pts/"), || format!("{t:?}: tty said {text:?}"))?;
        check(o.stderr.is_empty(), || format!("{t:?}: a tty session has no stderr, got {:?}", o.stderr))?;
    }
    ctx.remove_pod(&pod.id).await
}

/// Attach receives the container's output and ends when the container exits.
pub async fn attach_output(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("stream-attach").await?;
    for (i, t) in [Transport::Spdy("v4.channel.k8s.io"), Transport::WebSocket("v5.channel.k8s.io")].into_iter().enumerate() {
        let name = format!("attach{i}");
        let id = ctx.start_container(&pod, &name, &ctx.images.busybox, &["sh", "-c", "sleep 3; echo attached-output; sleep 1"]).await?;
        let req = cri::AttachRequest { container_id: id.clone(), stdin: false, tty: false, stdout: true, stderr: true };
        let Some(resp) = unimplemented(ctx.rt().attach(req).await, "Attach")? else {
            ctx.remove_pod(&pod.id).await?;
            return skip("Attach is Unimplemented on this runtime");
        };
        let Some(o) = session(ctx, &resp.into_inner().url, t, &Session { stderr: true, ..Default::default() }).await? else { continue };
        check(String::from_utf8_lossy(&o.stdout).contains("attached-output"), || {
            format!("{t:?}: attach stdout {:?}", String::from_utf8_lossy(&o.stdout))
        })?;
    }
    ctx.remove_pod(&pod.id).await
}

/// PortForward to `busybox httpd` in a pod, over SPDY and WebSocket; a closed port reports an
/// error instead of hanging.
pub async fn port_forward(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("stream-pf").await?;
    let id = ctx
        .start_container(
            &pod,
            "httpd",
            &ctx.images.busybox,
            &["sh", "-c", "mkdir -p /tmp/www && echo hello-pf > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
        )
        .await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in [Transport::Spdy("portforward.k8s.io"), Transport::WebSocket("v4.channel.k8s.io")] {
        let req = cri::PortForwardRequest { pod_sandbox_id: pod.id.clone(), port: vec![8080] };
        let Some(resp) = unimplemented(ctx.rt().port_forward(req).await, "PortForward")? else {
            ctx.remove_pod(&pod.id).await?;
            return skip("PortForward is Unimplemented on this runtime");
        };
        let (got, err) = sc::port_forward(&resp.into_inner().url, t, 8080, b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .with_context(|| format!("{t:?}"))?;
        let text = String::from_utf8_lossy(&got);
        check(text.contains("200") && text.contains("hello-pf"), || format!("{t:?}: response {text:?}, error {err:?}"))?;
    }
    let req = cri::PortForwardRequest { pod_sandbox_id: pod.id.clone(), port: vec![9] };
    let url = ctx.rt().port_forward(req).await.context("PortForward port 9")?.into_inner().url;
    let (got, err) = sc::port_forward(&url, Transport::Spdy("portforward.k8s.io"), 9, b"x").await.context("closed port")?;
    check(got.is_empty() && !err.is_empty(), || format!("closed port 9: data {got:?}, error text {err:?}"))?;
    ctx.remove_pod(&pod.id).await
}

/// Size of each connection's payload in [`port_forward_parallel`].
const PF_PAYLOAD: usize = 10 * 1024 * 1024;
/// Connections multiplexed over one SPDY session in [`port_forward_parallel`].
const PF_PARALLEL: usize = 20;
/// Separate WebSocket connections in [`port_forward_parallel`] (one connection per socket).
const PF_WS_PARALLEL: usize = 4;

/// `len` pseudo-random bytes from `seed` (xorshift64*): distinct per connection, incompressible.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A pod whose container serves `port` with `busybox nc -ll -e` (a process per connection)
/// running `script` (sh, stdin/stdout = the connection). Returns (pod, container id).
pub(crate) async fn nc_server(ctx: &Ctx, name: &str, port: u16, script: &str) -> Result<(Pod, String)> {
    let pod = ctx.run_pod(name).await?;
    let cmd = format!(
        "printf '#!/bin/sh\\n%s\\n' '{script}' > /tmp/serve.sh && chmod +x /tmp/serve.sh && exec nc -ll -p {port} -e /tmp/serve.sh"
    );
    let id = ctx.start_container(&pod, "nc", &ctx.images.busybox, &["sh", "-c", &cmd]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((pod, id))
}

/// Checks each connection echoed its payload byte-exact (length and SHA-256 of both ends).
fn check_echoes(what: &str, payloads: &[Vec<u8>], got: &[sc::Forwarded]) -> Result<()> {
    let bad: Vec<String> = payloads
        .iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (p, g))| p.len() != g.received.len() || sha256_hex(p) != sha256_hex(&g.received))
        .map(|(i, (p, g))| {
            format!(
                "#{i}: sent {} B sha256 {:.12}, got {} B sha256 {:.12}, error {:?}",
                p.len(),
                sha256_hex(p),
                g.received.len(),
                sha256_hex(&g.received),
                g.error
            )
        })
        .collect();
    check(bad.is_empty(), || format!("{what}: {} of {} connections differ: {}", bad.len(), payloads.len(), bad.join("; ")))
}

/// 20 port-forward connections at once over ONE SPDY session (`portforward.k8s.io`; opened one
/// after the other, all running together, see `port_forward_spdy_parallel`), each
/// sending 10 MiB of distinct data to an echo server in the pod (`nc -ll -e dd`: echoes exactly
/// 10 MiB, then closes) and reading 10 MiB back; every connection byte-exact by SHA-256 of
/// both ends. Then 4 parallel WebSocket v4 connections (one per socket) the same way, when the
/// runtime offers WebSocket port-forward.
pub async fn port_forward_parallel(ctx: &Ctx) -> Result<()> {
    let blocks = PF_PAYLOAD / 65536;
    let (pod, _) = nc_server(ctx, "stream-pf-par", 8080, &format!("exec dd bs=65536 count={blocks} iflag=fullblock 2>/dev/null")).await?;
    let pf = |pod_id: String| async move {
        let req = cri::PortForwardRequest { pod_sandbox_id: pod_id, port: vec![8080] };
        unimplemented(ctx.rt().port_forward(req).await, "PortForward").map(|r| r.map(|r| r.into_inner().url))
    };
    let Some(url) = pf(pod.id.clone()).await? else {
        ctx.remove_pod(&pod.id).await?;
        return skip("PortForward is Unimplemented on this runtime");
    };
    let limit = Duration::from_secs(90);
    let payloads: Vec<Vec<u8>> = (0..PF_PARALLEL).map(|i| pattern(i as u64 + 1, PF_PAYLOAD)).collect();
    let t = std::time::Instant::now();
    let got = sc::port_forward_spdy_parallel(&url, "portforward.k8s.io", 8080, payloads.clone(), limit, true)
        .await
        .context("SPDY port-forward")?;
    eprintln!("note: {PF_PARALLEL} x 10 MiB each way over one SPDY session in {:.1} s", t.elapsed().as_secs_f64());
    check_echoes("SPDY portforward.k8s.io", &payloads, &got)?;

    let ws = Transport::WebSocket("v4.channel.k8s.io");
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, p) in payloads.into_iter().take(PF_WS_PARALLEL).enumerate() {
        let url = pf(pod.id.clone()).await?.context("PortForward answered Unimplemented after it worked")?;
        tasks.push((
            p.clone(),
            tokio::spawn(async move { sc::port_forward_duplex(&url, ws, 8080, p, limit).await.with_context(|| format!("connection {i}")) }),
        ));
        // One at a time into nc's listen backlog of 2 (see `port_forward_spdy_parallel`).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    for (p, task) in tasks {
        match task.await.context("websocket port-forward task")? {
            Ok(f) => {
                sent.push(p);
                got.push(f);
            }
            Err(e) if ctx.kind != TargetKind::Berth && optional_failure(&e) => {
                eprintln!("note: {ws:?} port-forward not offered by this runtime: {e:#}");
            }
            Err(e) => return Err(e.context(format!("{ws:?} port-forward"))),
        }
    }
    if !got.is_empty() {
        eprintln!("note: {} x 10 MiB each way over {} WebSockets in {:.1} s", got.len(), got.len(), t.elapsed().as_secs_f64());
    }
    check_echoes("WebSocket v4.channel.k8s.io", &sent, &got)?;
    ctx.remove_pod(&pod.id).await
}
