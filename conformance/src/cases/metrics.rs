//! Metrics: berth's Prometheus endpoint (counters move after RPCs) and CRI
//! ListMetricDescriptors / ListPodSandboxMetrics (a burning container's CPU counter grows).
//!
//! The endpoint is berth's own (`[metrics]`, written by the harness into `<tmp>/berth.toml`):
//! skipped on other targets. The CRI metrics RPCs are skipped where they answer Unimplemented
//! (containerd 1.6).

use super::util::check;
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// `127.0.0.1:<port>` of the metrics endpoint the harness configured for berth.
fn metrics_addr(ctx: &Ctx) -> Result<String> {
    let opts = berth::config::LoadOptions { config_file: Some(ctx.tmp.join("berth.toml")), env: Some(Vec::new()), ..Default::default() };
    let cfg = berth::config::Config::load(&opts).context("reading the harness's berth.toml")?;
    if !cfg.metrics.enabled {
        bail!("the harness's berth.toml does not enable [metrics]");
    }
    Ok(format!("{}:{}", cfg.metrics.address, cfg.metrics.port))
}

/// The value of the sample whose line starts with `series` (`name{labels}` exactly as the
/// endpoint writes it) followed by a space; `None` when absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(addr: &str) -> Result<String> {
    let addr = addr.to_string();
    let r = tokio::task::spawn_blocking(move || crate::http::request(&addr, "GET", "/metrics", None, b"")).await??;
    check(r.status == 200, || format!("GET /metrics: status {}", r.status))?;
    let ct = r.header("content-type").unwrap_or("");
    check(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), || format!("GET /metrics: Content-Type {ct:?}"))?;
    String::from_utf8(r.body).context("GET /metrics: body is not UTF-8")
}

/// After Version x3, ContainerStatus of a missing ID and an image pull, the endpoint's
/// `berth_grpc_requests_total{method,code}` and latency counts moved by at least that much,
/// the pull duration count grew, `berth_containers{state}` lists every state, every family has
/// HELP and TYPE, and other paths are 404.
pub async fn endpoint_counts(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("the /metrics endpoint is berth's own");
    }
    let addr = metrics_addr(ctx)?;
    let version_ok = r#"berth_grpc_requests_total{method="Version",code="OK"}"#;
    let status_nf = r#"berth_grpc_requests_total{method="ContainerStatus",code="NotFound"}"#;
    let version_lat = r#"berth_grpc_request_duration_seconds_count{method="Version"}"#;
    let pulls = "berth_image_pull_duration_seconds_count";
    let before = scrape(&addr).await?;
    for _ in 0..3 {
        ctx.rt().version(cri::VersionRequest { version: "v1".into() }).await.context("Version")?;
    }
    let missing = "0".repeat(64);
    let e = ctx.rt().container_status(cri::ContainerStatusRequest { container_id: missing, verbose: false }).await;
    check(matches!(&e, Err(s) if s.code() == tonic::Code::NotFound), || format!("ContainerStatus of a missing ID: {e:?}"))?;
    ctx.pull(&ctx.images.busybox).await?;
    let after = scrape(&addr).await?;
    let delta = |s: &str| sample(&after, s).unwrap_or(0.0) - sample(&before, s).unwrap_or(0.0);
    eprintln!(
        "note metrics_endpoint_counts: Version OK +{}, ContainerStatus NotFound +{}, pulls +{}, pull bytes {:?}",
        delta(version_ok),
        delta(status_nf),
        delta(pulls),
        sample(&after, "berth_image_pull_bytes_total")
    );
    check(delta(version_ok) >= 3.0, || format!("{version_ok} moved by {}, expected >= 3", delta(version_ok)))?;
    check(delta(status_nf) >= 1.0, || format!("{status_nf} moved by {}, expected >= 1", delta(status_nf)))?;
    check(delta(version_lat) >= 3.0, || format!("{version_lat} moved by {}, expected >= 3", delta(version_lat)))?;
    let inf = r#"berth_grpc_request_duration_seconds_bucket{method="Version",le="+Inf"}"#;
    check(sample(&after, inf) == sample(&after, version_lat), || format!("{inf} differs from the _count"))?;
    check(delta(pulls) >= 1.0, || format!("{pulls} moved by {}, expected >= 1 after PullImage", delta(pulls)))?;
    for state in ["created", "running", "exited", "unknown"] {
        let s = format!("berth_containers{{state=\"{state}\"}}");
        check(sample(&after, &s).is_some(), || format!("{s} missing from the scrape"))?;
    }
    for fam in [
        "berth_grpc_requests_total",
        "berth_grpc_request_duration_seconds",
        "berth_image_pull_bytes_total",
        "berth_image_pull_duration_seconds",
        "berth_containers",
        "berth_container_oom_kills_total",
    ] {
        check(after.contains(&format!("\n# TYPE {fam} ")) || after.starts_with(&format!("# HELP {fam} ")), || {
            format!("family {fam} has no TYPE line")
        })?;
    }
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || crate::http::request(&a, "GET", "/nope", None, b"")).await??;
    check(r.status == 404, || format!("GET /nope: status {}", r.status))
}

fn metric_value(m: &cri::Metric) -> u64 {
    m.value.as_ref().map_or(0, |v| v.value)
}

/// ListMetricDescriptors names the cAdvisor metrics kubelet reads; ListPodSandboxMetrics has
/// the pod with its burning container, whose `container_cpu_usage_seconds_total` grows over
/// 2.5 s, whose working set is non-zero, and whose label values match the descriptor keys.
pub async fn pod_sandbox_metrics_cpu_grows(ctx: &Ctx) -> Result<()> {
    let descs = match ctx.rt().list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await {
        Ok(r) => r.into_inner().descriptors,
        Err(s) if s.code() == tonic::Code::Unimplemented => return skip("ListMetricDescriptors is not served"),
        Err(s) => bail!("ListMetricDescriptors: {s}"),
    };
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_spec_memory_limit_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_processes",
    ] {
        check(descs.iter().any(|d| d.name == name), || format!("ListMetricDescriptors lacks {name}"))?;
    }
    let pod = ctx.run_pod("metricscpu").await?;
    let res = async {
        let id = ctx.start_container(&pod, "burn", &ctx.images.busybox, &["sh", "-c", "while :; do :; done"]).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let cpu_of = |all: &[cri::PodSandboxMetrics]| -> Result<(u64, Vec<cri::Metric>)> {
            let p =
                all.iter().find(|p| p.pod_sandbox_id == pod.id).with_context(|| format!("pod {} not in ListPodSandboxMetrics", pod.id))?;
            let c = p
                .container_metrics
                .iter()
                .find(|c| c.container_id == id)
                .with_context(|| format!("container {id} not in its pod's metrics"))?;
            let cpu =
                c.metrics.iter().find(|m| m.name == "container_cpu_usage_seconds_total").context("no container_cpu_usage_seconds_total")?;
            check(cpu.metric_type == cri::MetricType::Counter as i32, || format!("cpu metric_type {}", cpu.metric_type))?;
            let mut all_metrics = c.metrics.clone();
            all_metrics.extend(p.metrics.iter().cloned());
            Ok((metric_value(cpu), all_metrics))
        };
        let list = |ctx: &Ctx| {
            let mut rt = ctx.rt();
            async move {
                match rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await {
                    Ok(r) => Ok(Some(r.into_inner().pod_metrics)),
                    Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
                    Err(s) => Err(anyhow::anyhow!("ListPodSandboxMetrics: {s}")),
                }
            }
        };
        let Some(first) = list(ctx).await? else { return skip("ListPodSandboxMetrics is not served") };
        let (a, _) = cpu_of(&first)?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let second = list(ctx).await?.context("ListPodSandboxMetrics stopped being served")?;
        let (b, metrics) = cpu_of(&second)?;
        eprintln!("note metrics_pod_sandbox_cpu_grows: cpu {a} -> {b} s, {} metrics", metrics.len());
        check(b > a, || format!("container_cpu_usage_seconds_total {a} -> {b} s after 2.5 s of spinning"))?;
        let ws =
            metrics.iter().find(|m| m.name == "container_memory_working_set_bytes").context("no container_memory_working_set_bytes")?;
        check(metric_value(ws) > 0, || "container_memory_working_set_bytes is 0".to_string())?;
        for m in &metrics {
            let Some(d) = descs.iter().find(|d| d.name == m.name) else { bail!("metric {} has no descriptor", m.name) };
            check(m.label_values.len() == d.label_keys.len(), || {
                format!("{}: label values {:?} for keys {:?}", m.name, m.label_values, d.label_keys)
            })?;
        }
        // The process metrics (berth; cAdvisor names), from /proc of the container's processes:
        // the spinning shell has a thread and its three standard descriptors.
        if ctx.kind == crate::daemon::TargetKind::Berth {
            let get = |n: &str| metrics.iter().find(|m| m.name == n).map(metric_value);
            check(get("container_threads").is_some_and(|t| t >= 1), || format!("container_threads {:?}", get("container_threads")))?;
            check(get("container_file_descriptors").is_some_and(|f| f >= 3), || {
                format!("container_file_descriptors {:?}", get("container_file_descriptors"))
            })?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            check(get("container_start_time_seconds").is_some_and(|t| t <= now && t + 600 > now), || {
                format!("container_start_time_seconds {:?}, now {now}", get("container_start_time_seconds"))
            })?;
            let user = get("container_cpu_user_seconds_total").unwrap_or(0) + get("container_cpu_system_seconds_total").unwrap_or(0);
            check(user >= 1, || {
                "container_cpu_user_seconds_total + container_cpu_system_seconds_total is 0 after 2.5 s of spinning".to_string()
            })?;
        }
        Ok(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// The cAdvisor metric names critest (cri-tools after v1.36.0) requires of ListMetricDescriptors
/// and, for a running container, of ListPodSandboxMetrics (its list minus the ones it marks
/// unimplemented by every runtime: hugetlb, PSI, reservation, ulimits). The block I/O ones are
/// described but their values are optional (no I/O may have reached a block device).
const CADVISOR_SET: &[&str] = &[
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
];
const OPTIONAL_VALUES: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
];

/// The whole cAdvisor set critest checks, with real values: a container limited to 20% of a CPU
/// and 64 MiB (swap limit 64 MiB) spins and writes ten files; every required name is described
/// (help, label keys) and sent with as many label values as keys; the CFS counters show the
/// throttling, the spec metrics show the limits, the writable layer's usage covers the files.
pub async fn cadvisor_set_with_values(ctx: &Ctx) -> Result<()> {
    let descs = match ctx.rt().list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await {
        Ok(r) => r.into_inner().descriptors,
        Err(s) if s.code() == tonic::Code::Unimplemented => return skip("ListMetricDescriptors is not served"),
        Err(s) => bail!("ListMetricDescriptors: {s}"),
    };
    for d in &descs {
        check(!d.help.is_empty() && !d.label_keys.is_empty(), || format!("descriptor {} has no help or no label keys", d.name))?;
    }
    let missing: Vec<&str> = CADVISOR_SET.iter().chain(OPTIONAL_VALUES).copied().filter(|n| !descs.iter().any(|d| d.name == *n)).collect();
    if ctx.kind != crate::daemon::TargetKind::Berth && !missing.is_empty() {
        eprintln!("note metrics_cadvisor_set_with_values: not described: {missing:?}");
        return skip("this runtime predates the cAdvisor metric set critest checks");
    }
    check(missing.is_empty(), || format!("ListMetricDescriptors lacks {missing:?}"))?;
    let pod = ctx.run_pod("metricsset").await?;
    let res = async {
        let script = "mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do echo hi >> /var/lib/mydisktest/f$i; done; \
                      dd if=/dev/zero of=/var/lib/mydisktest/big bs=4096 count=64 2>/dev/null; sync; while :; do :; done";
        let mut config = ctx.container_config("spin", &ctx.images.busybox, &["sh", "-c", script]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 20_000,
                cpu_shares: 1024,
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        // A few CFS periods of 100 ms at 20% of a CPU (throttled in most of them), and the script's
        // writes done: at 20% of a CPU that takes a while on a slow (emulated) machine, so poll.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut waited = Duration::ZERO;
        let (p, c) = loop {
            let step = Duration::from_millis(500);
            tokio::time::sleep(step).await;
            waited += step;
            let all = ctx.rt().list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await?.into_inner().pod_metrics;
            let p = all
                .into_iter()
                .find(|p| p.pod_sandbox_id == pod.id)
                .with_context(|| format!("pod {} not in ListPodSandboxMetrics", pod.id))?;
            let c = p
                .container_metrics
                .iter()
                .find(|c| c.container_id == id)
                .cloned()
                .with_context(|| format!("container {id} not in its pod's metrics"))?;
            let value = |n: &str| c.metrics.iter().find(|m| m.name == n).map(metric_value).unwrap_or(0);
            let written = value("container_fs_usage_bytes") >= 256 << 10;
            if (written && waited >= Duration::from_millis(1500)) || tokio::time::Instant::now() >= deadline {
                break (p, c);
            }
        };
        let metrics: Vec<&cri::Metric> = c.metrics.iter().chain(p.metrics.iter()).collect();
        let not_sent: Vec<&str> = CADVISOR_SET.iter().copied().filter(|n| !metrics.iter().any(|m| m.name == *n)).collect();
        check(not_sent.is_empty(), || format!("not sent for a running container: {not_sent:?}"))?;
        for m in &metrics {
            let Some(d) = descs.iter().find(|d| d.name == m.name) else { bail!("metric {} has no descriptor", m.name) };
            check(m.label_values.len() == d.label_keys.len(), || {
                format!("{}: label values {:?} for keys {:?}", m.name, m.label_values, d.label_keys)
            })?;
        }
        let get = |n: &str| metrics.iter().find(|m| m.name == n).map(|m| metric_value(m)).unwrap_or(0);
        let figures = |names: &[&str]| names.iter().map(|n| format!("{n}={}", get(n))).collect::<Vec<_>>().join(" ");
        eprintln!(
            "note metrics_cadvisor_set_with_values: {}",
            figures(&[
                "container_cpu_cfs_periods_total",
                "container_cpu_cfs_throttled_periods_total",
                "container_spec_memory_swap_limit_bytes",
                "container_fs_usage_bytes",
                "container_threads_max"
            ])
        );
        check(get("container_cpu_cfs_periods_total") >= 3 && get("container_cpu_cfs_throttled_periods_total") >= 1, || {
            format!(
                "a spinning container at 20% of a CPU for 1.5 s shows {}",
                figures(&["container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total"])
            )
        })?;
        check(get("container_spec_memory_limit_bytes") == 64 << 20 && get("container_spec_cpu_period") == 100_000, || {
            figures(&["container_spec_memory_limit_bytes", "container_spec_cpu_period"])
        })?;
        let swap_limit = get("container_spec_memory_swap_limit_bytes");
        check(swap_limit == 0 || swap_limit == 64 << 20, || {
            format!("container_spec_memory_swap_limit_bytes {swap_limit}, expected 64 MiB (or 0 where the host cannot limit swap)")
        })?;
        check(get("container_fs_usage_bytes") >= 256 << 10 && get("container_fs_inodes_total") > get("container_fs_inodes_free"), || {
            format!(
                "after writing 256 KiB: {}",
                figures(&["container_fs_usage_bytes", "container_fs_inodes_total", "container_fs_inodes_free", "container_fs_limit_bytes"])
            )
        })?;
        let failures: Vec<&Vec<String>> =
            metrics.iter().filter(|m| m.name == "container_memory_failures_total").map(|m| &m.label_values).collect();
        check(failures.len() == 4, || {
            format!("container_memory_failures_total series {failures:?}, expected pgfault/pgmajfault x container/hierarchy")
        })?;
        check(get("container_memory_max_usage_bytes") >= get("container_memory_usage_bytes"), || {
            figures(&["container_memory_max_usage_bytes", "container_memory_usage_bytes"])
        })
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
