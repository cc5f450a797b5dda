//! Streaming rows of the bench: exec round-trip latency and port-forward throughput, through
//! the runtime's own streaming server (CRI Exec / PortForward, then the URL it returned).
//!
//! One pod runs a busybox container with two `nc -ll` servers (a process per connection):
//! port 8081 sends [`PF_BYTES`] of zeros and closes (download), port 8082 reads exactly
//! [`PF_BYTES`] and answers `done` (upload). Exec runs in the same container.
//!
//! - exec round trip: `Exec(["echo", "hi"], stdout)` + SPDY/3.1 `v4.channel.k8s.io` upgrade,
//!   streams, until the exit status arrived on the error stream; `--execs` times (default 100).
//! - port-forward: `PortForward` + SPDY `portforward.k8s.io` upgrade + one connection moving
//!   64 MiB; MiB/s from the whole span, [`PF_RUNS`] times each way (the median is reported).

use crate::rpc::{create_start, pod_config, remove_pod, run_pod, sleep_config};
use crate::Samples;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::stream_client::{self as sc, Session, Transport};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes moved by one port-forward run (64 MiB).
pub const PF_BYTES: usize = 64 << 20;
/// Port-forward runs per direction.
pub const PF_RUNS: usize = 3;

/// What the streaming phase measured on one target.
#[derive(Default)]
pub struct StreamResults {
    /// Exec round trips.
    pub exec: Samples,
    /// Port-forward download throughputs, MiB/s.
    pub pf_down: Vec<f64>,
    /// Port-forward upload throughputs, MiB/s.
    pub pf_up: Vec<f64>,
}

/// The median of MiB/s figures, as text.
pub fn median_rate(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => "n/a".into(),
        n => format!("{:.0} MiB/s", if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }),
    }
}

/// min / max of MiB/s figures, as text.
pub fn range_rate(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    if v.is_empty() {
        "n/a".into()
    } else {
        format!("{min:.0} .. {max:.0} MiB/s")
    }
}

async fn port_forward_url(c: &mut Clients, pod: &str, port: u16) -> Result<String> {
    let req = cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: vec![i32::from(port)] };
    Ok(c.rt.port_forward(req).await.context("PortForward")?.into_inner().url)
}

/// Runs the streaming rows in a fresh pod; removes the pod (errors reported).
pub async fn phase_streaming(dir: &Path, c: &mut Clients, image: &str, execs: usize, r: &mut StreamResults) -> Result<()> {
    let cfg = pod_config(dir, "streaming");
    let pod = run_pod(c, &cfg).await?;
    let res = measure(c, &pod, &cfg, image, execs, r).await;
    let rm = remove_pod(c, &pod).await;
    res.and(rm)
}

async fn measure(c: &mut Clients, pod: &str, cfg: &cri::PodSandboxConfig, image: &str, execs: usize, r: &mut StreamResults) -> Result<()> {
    let blocks = PF_BYTES / 65536;
    let script = format!(
        "printf '#!/bin/sh\\nexec dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null\\n' > /tmp/down.sh && \
         printf '#!/bin/sh\\ndd bs=65536 count={blocks} iflag=fullblock of=/dev/null 2>/dev/null; echo done\\n' > /tmp/up.sh && \
         chmod +x /tmp/down.sh /tmp/up.sh && (nc -ll -p 8081 -e /tmp/down.sh &) && exec nc -ll -p 8082 -e /tmp/up.sh"
    );
    let mut ccfg = sleep_config("nc", image);
    ccfg.command = vec!["sh".into(), "-c".into(), script];
    let id = create_start(c, pod, cfg, ccfg).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..execs {
        let t = Instant::now();
        let req = cri::ExecRequest { container_id: id.clone(), cmd: vec!["echo".into(), "hi".into()], stdout: true, ..Default::default() };
        let url = c.rt.exec(req).await.context("Exec")?.into_inner().url;
        let o = sc::remotecommand(&url, Transport::Spdy("v4.channel.k8s.io"), &Session::default())
            .await
            .with_context(|| format!("exec {i}"))?;
        r.exec.0.push(t.elapsed());
        if o.stdout != b"hi\n" || o.exit_code()? != 0 {
            bail!("exec {i}: stdout {:?}, status {:?}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.error));
        }
    }
    let spdy = Transport::Spdy("portforward.k8s.io");
    let limit = Duration::from_secs(60);
    for i in 0..PF_RUNS {
        let t = Instant::now();
        let url = port_forward_url(c, pod, 8081).await?;
        let f = sc::port_forward_duplex(&url, spdy, 8081, Vec::new(), limit).await.with_context(|| format!("port-forward download {i}"))?;
        let secs = t.elapsed().as_secs_f64();
        if f.received.len() != PF_BYTES || f.received.iter().any(|b| *b != 0) {
            bail!("port-forward download {i}: got {} bytes (expected {PF_BYTES} zeros), error {:?}", f.received.len(), f.error);
        }
        r.pf_down.push(PF_BYTES as f64 / (1 << 20) as f64 / secs);

        let t = Instant::now();
        let url = port_forward_url(c, pod, 8082).await?;
        let f = sc::port_forward_duplex(&url, spdy, 8082, vec![0u8; PF_BYTES], limit)
            .await
            .with_context(|| format!("port-forward upload {i}"))?;
        let secs = t.elapsed().as_secs_f64();
        if f.received != b"done\n" {
            bail!(
                "port-forward upload {i}: the pod answered {:?} (expected \"done\"), error {:?}",
                String::from_utf8_lossy(&f.received),
                f.error
            );
        }
        r.pf_up.push(PF_BYTES as f64 / (1 << 20) as f64 / secs);
    }
    Ok(())
}
