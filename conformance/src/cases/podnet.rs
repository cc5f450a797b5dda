//! Pod-level namespaces and identity: host network pods, pod DNS config and hostname.

use super::util::check;
use crate::ctx::{Ctx, Pod};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::collections::BTreeSet;
use std::time::Duration;

/// A running `sleep 1000` busybox container named `name` in `pod`.
async fn sleeper(ctx: &Ctx, pod: &Pod, name: &str) -> Result<String> {
    let id = ctx.start_container(pod, name, &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    Ok(id)
}

/// ExecSync `cmd` in `id` and require exit 0; returns stdout as text.
async fn exec_ok(ctx: &Ctx, id: &str, cmd: &[&str]) -> Result<String> {
    let r = ctx.exec(id, cmd, 10).await?;
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    check(r.exit_code == 0, || format!("{cmd:?} exited {}: stdout {out:?} stderr {:?}", r.exit_code, String::from_utf8_lossy(&r.stderr)))?;
    Ok(out)
}

/// Interface names of a /proc/net/dev text (the part before ':' of every line after the two
/// header lines).
fn interface_names(text: &str) -> BTreeSet<String> {
    text.lines().skip(2).filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_string()).filter(|n| !n.is_empty()).collect()
}

fn host_interfaces() -> Result<BTreeSet<String>> {
    Ok(interface_names(&std::fs::read_to_string("/proc/net/dev").context("read the host's /proc/net/dev")?))
}

/// `namespace_options.network = NODE`: the pod is READY; a container in it sees the node's
/// hostname, the host's network namespace (same `net:[inode]`) and the host's interfaces in
/// /proc/net/dev. What PodSandboxStatus.network says is recorded as a note.
///
/// Like kubelet (`generatePodSandboxConfig` sets `hostname` only for pods without host
/// network), the config carries no hostname: the UTS namespace goes with the host network.
/// containerd 1.6 fails such a pod that does carry a hostname (runc: "unable to set hostname
/// without a private UTS namespace"), berth ignores it.
pub async fn host_network_pod(ctx: &Ctx) -> Result<()> {
    let mut cfg = ctx.pod_config("hostnet", &[]);
    cfg.hostname = String::new();
    if let Some(l) = cfg.linux.as_mut() {
        let sc = l.security_context.get_or_insert_with(Default::default);
        sc.namespace_options = Some(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() });
    }
    let pod = ctx.run_pod_with(cfg).await?;
    let res = host_network_checks(ctx, &pod).await;
    ctx.remove_pod(&pod.id).await?;
    res
}

async fn host_network_checks(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let st = ctx
        .rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .context("PodSandboxStatus: no status")?;
    check(st.state == cri::PodSandboxState::SandboxReady as i32, || {
        format!("host network pod state {}, expected SANDBOX_READY", st.state)
    })?;
    let ns = st.linux.as_ref().and_then(|l| l.namespaces.as_ref()).and_then(|n| n.options.as_ref()).map(|o| o.network);
    eprintln!("note host_network_pod: PodSandboxStatus.network {:?}, linux.namespaces.options.network {ns:?}", st.network);
    let id = sleeper(ctx, pod, "hostnet").await?;
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the host's hostname")?.trim().to_string();
    let got = exec_ok(ctx, &id, &["hostname"]).await?;
    check(got.trim() == host_name, || {
        format!("`hostname` in a host network pod printed {:?}, expected the node's {host_name:?}", got.trim())
    })?;
    let host_net = std::fs::read_link("/proc/self/ns/net").context("readlink the host's /proc/self/ns/net")?.display().to_string();
    let got = exec_ok(ctx, &id, &["readlink", "/proc/self/ns/net"]).await?;
    check(got.trim() == host_net, || format!("container network namespace {:?}, expected the host's {host_net:?}", got.trim()))?;
    let before = host_interfaces()?;
    let inside = interface_names(&exec_ok(ctx, &id, &["cat", "/proc/net/dev"]).await?);
    let after = host_interfaces()?;
    check(inside == before || inside == after, || format!("container /proc/net/dev lists {inside:?}, the host's lists {after:?}"))?;
    Ok(())
}

/// PodSandboxConfig.hostname and dns_config reach the container: /etc/resolv.conf has the
/// nameserver, search and options lines; `hostname` and /etc/hostname say "conf-host".
pub async fn pod_dns_and_hostname(ctx: &Ctx) -> Result<()> {
    let mut cfg = ctx.pod_config("dns", &[]);
    cfg.hostname = "conf-host".into();
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["ns.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = ctx.run_pod_with(cfg).await?;
    let res = dns_checks(ctx, &pod).await;
    ctx.remove_pod(&pod.id).await?;
    res
}

async fn dns_checks(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let id = sleeper(ctx, pod, "dns").await?;
    let resolv = exec_ok(ctx, &id, &["cat", "/etc/resolv.conf"]).await?;
    let lines: Vec<String> = resolv.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    for want in ["nameserver 10.0.0.10", "search ns.svc.cluster.local", "options ndots:5"] {
        check(lines.iter().any(|l| l == want), || format!("/etc/resolv.conf lacks the line {want:?}: {resolv:?}"))?;
    }
    let h = exec_ok(ctx, &id, &["hostname"]).await?;
    check(h.trim() == "conf-host", || format!("`hostname` printed {:?}, expected \"conf-host\"", h.trim()))?;
    let f = exec_ok(ctx, &id, &["cat", "/etc/hostname"]).await?;
    check(f.trim() == "conf-host", || format!("/etc/hostname is {f:?}, expected \"conf-host\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n  eth0: 4 5 6\nbrt0:7 8\n";
        let want: BTreeSet<String> = ["lo", "eth0", "brt0"].iter().map(|s| s.to_string()).collect();
        assert_eq!(interface_names(text), want);
    }
}
