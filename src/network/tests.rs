//! Tests of [`Cni`] against fake plugins (shell scripts that log what they got) and, as root,
//! against Debian's real bridge + host-local + portmap plugins in a pinned netns (whose `lo`
//! berth brings up itself).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::config::NetworkConfig;

const FAKE_PLUGIN: &str = r#"#!/bin/sh
d=$(dirname "$0"); n=$(basename "$0")
in=$(cat)
echo "$CNI_COMMAND $n $CNI_IFNAME" >> "$d/log"
printf '%s' "$in" > "$d/stdin-$CNI_COMMAND-$n"
env | sort > "$d/env-$CNI_COMMAND-$n"
if [ -f "$d/fail-$CNI_COMMAND-$n" ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"boom","details":"from '"$n"'"}'; exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  echo "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.2.3/24\"}],\"plugin\":\"$n\"}"
fi
"#;

struct Fake {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    cni: Cni,
    cfg: NetworkConfig,
}

fn fake() -> Fake {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let conf = tmp.path().join("conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    for n in ["fakea", "fakeb", "loopback"] {
        let p = bin.join(n);
        std::fs::write(&p, FAKE_PLUGIN).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let list = json!({"cniVersion":"1.0.0","name":"fakenet","plugins":[
        {"type":"fakea","x":1},
        {"type":"fakeb","capabilities":{"portMappings":true}}]});
    std::fs::write(conf.join("10-fake.conflist"), list.to_string()).unwrap();
    let cfg = NetworkConfig {
        conf_dir: conf,
        plugin_dirs: vec![tmp.path().join("absent"), bin.clone()],
        cache_dir: tmp.path().join("cache"),
        default_network: String::new(),
    };
    Fake { cni: Cni::new(cfg.clone()), cfg, bin, _tmp: tmp }
}

fn request(netns: &Path) -> AttachRequest {
    AttachRequest {
        container_id: "sb1".into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        pod_name: "web".into(),
        pod_namespace: "default".into(),
        pod_uid: "uid-1".into(),
        port_mappings: vec![PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() }],
    }
}

fn log(f: &Fake) -> Vec<String> {
    std::fs::read_to_string(f.bin.join("log")).unwrap_or_default().lines().map(String::from).collect()
}

fn stdin_of(f: &Fake, command: &str, plugin: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(f.bin.join(format!("stdin-{command}-{plugin}"))).unwrap()).unwrap()
}

#[tokio::test]
async fn add_chains_caches_and_del_reverses() {
    let f = fake();
    assert_eq!(f.cni.status().unwrap(), "fakenet");
    let req = request(Path::new("/var/run/netns/fake"));
    let r = f.cni.setup(&req).await.unwrap();
    assert_eq!(r.ips, vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(r.result["plugin"], "fakeb", "the last plugin's result is final");
    assert_eq!(log(&f), ["ADD fakea eth0", "ADD fakeb eth0"], "no loopback plugin: netns::create brings lo up");

    let a = stdin_of(&f, "ADD", "fakea");
    assert_eq!((a["name"].as_str(), a["cniVersion"].as_str(), a["x"].as_i64()), (Some("fakenet"), Some("1.0.0"), Some(1)));
    assert!(a.get("prevResult").is_none() && a.get("runtimeConfig").is_none(), "{a}");
    let b = stdin_of(&f, "ADD", "fakeb");
    assert_eq!(b["prevResult"]["plugin"], "fakea");
    assert_eq!(b["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);

    let env = std::fs::read_to_string(f.bin.join("env-ADD-fakea")).unwrap();
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=sb1",
        "CNI_NETNS=/var/run/netns/fake",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1",
        &format!("CNI_PATH={}:{}", f.cfg.plugin_dirs[0].display(), f.bin.display()),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in\n{env}");
    }
    assert!(!env.contains("CARGO") && !env.contains("HOME="), "environment not cleared:\n{env}");

    let entry = cache::entry_path(&f.cfg.cache_dir, "fakenet", "sb1", "eth0");
    let cached = cache::read(&entry).unwrap().unwrap();
    assert_eq!(cached.result.as_ref().unwrap()["plugin"], "fakeb");
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "lo").is_empty());

    // DEL uses the cached config even after the conf dir lost it.
    std::fs::remove_file(f.cfg.conf_dir.join("10-fake.conflist")).unwrap();
    assert!(f.cni.status().unwrap_err().to_string().starts_with("no CNI network config found in"));
    f.cni.teardown(&req).await.unwrap();
    assert_eq!(log(&f)[2..], ["DEL fakeb eth0", "DEL fakea eth0"]);
    assert_eq!(stdin_of(&f, "DEL", "fakeb")["prevResult"]["plugin"], "fakeb", "cached result is prevResult");
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "eth0").is_empty() && cache::find(&f.cfg.cache_dir, "sb1", "lo").is_empty());
    // A second DEL with nothing cached and no config is fine.
    f.cni.teardown(&req).await.unwrap();
}

#[tokio::test]
async fn failed_add_is_undone_and_reports_the_plugin_error() {
    let f = fake();
    std::fs::write(f.bin.join("fail-ADD-fakeb"), "").unwrap();
    let e = f.cni.setup(&request(Path::new("/x"))).await.unwrap_err();
    match &e {
        NetworkError::PluginFailed { plugin, command, code, msg, details, network } => {
            assert_eq!(
                (plugin.as_str(), *command, *code, msg.as_str(), details.as_str(), network.as_str()),
                ("fakeb", "ADD", 7, "boom", "from fakeb", "fakenet")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.to_string().contains("boom"), "{e}");
    assert_eq!(log(&f), ["ADD fakea eth0", "ADD fakeb eth0", "DEL fakeb eth0", "DEL fakea eth0"]);
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "eth0").is_empty());

    // A loopback attachment cached by an older berth (which ran the loopback plugin) still
    // gets its DEL, before the pod network's.
    std::fs::remove_file(f.bin.join("fail-ADD-fakeb")).unwrap();
    let req = request(Path::new("/x"));
    f.cni.setup(&req).await.unwrap();
    let lo = json!({"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}]});
    cache::write(
        &f.cfg.cache_dir,
        &cache::CachedAttachment {
            kind: cache::CACHE_KIND.into(),
            container_id: "sb1".into(),
            config: lo.to_string().into_bytes(),
            if_name: "lo".into(),
            network_name: "cni-loopback".into(),
            netns: "/x".into(),
            cni_args: Vec::new(),
            capability_args: Default::default(),
            result: None,
        },
    )
    .unwrap();
    std::fs::remove_file(f.bin.join("log")).unwrap();
    f.cni.teardown(&req).await.unwrap();
    assert_eq!(log(&f), ["DEL loopback lo", "DEL fakeb eth0", "DEL fakea eth0"]);
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "eth0").is_empty() && cache::find(&f.cfg.cache_dir, "sb1", "lo").is_empty());

    // An unreadable loopback cache entry: DEL through the loopback config it had, never a
    // StopPodSandbox that fails on every retry.
    f.cni.setup(&req).await.unwrap();
    std::fs::write(cache::entry_path(&f.cfg.cache_dir, "cni-loopback", "sb1", "lo"), b"{not json").unwrap();
    std::fs::remove_file(f.bin.join("log")).unwrap();
    f.cni.teardown(&req).await.unwrap();
    assert_eq!(log(&f), ["DEL loopback lo", "DEL fakeb eth0", "DEL fakea eth0"]);
    assert_eq!(stdin_of(&f, "DEL", "loopback")["name"], "cni-loopback");
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "lo").is_empty(), "the unusable entry is gone after its DEL");
}

#[tokio::test]
async fn failed_del_runs_the_rest_and_keeps_the_cache() {
    let f = fake();
    let req = request(Path::new("/x"));
    f.cni.setup(&req).await.unwrap();
    std::fs::write(f.bin.join("fail-DEL-fakeb"), "").unwrap();
    let e = f.cni.teardown(&req).await.unwrap_err();
    assert!(matches!(e, NetworkError::TeardownFailed { .. }) && e.to_string().contains("boom"), "{e}");
    assert_eq!(log(&f)[2..], ["DEL fakeb eth0", "DEL fakea eth0"]);
    assert_eq!(cache::find(&f.cfg.cache_dir, "sb1", "eth0").len(), 1, "kept for a retry");
    std::fs::remove_file(f.bin.join("fail-DEL-fakeb")).unwrap();
    f.cni.teardown(&req).await.unwrap();
    assert!(cache::find(&f.cfg.cache_dir, "sb1", "eth0").is_empty());
}

#[tokio::test]
async fn missing_plugin_is_named() {
    let f = fake();
    std::fs::remove_file(f.bin.join("fakeb")).unwrap();
    let e = f.cni.setup(&request(Path::new("/x"))).await.unwrap_err().to_string();
    assert!(e.contains("\"fakeb\" not found"), "{e}");
    assert_eq!(log(&f), ["ADD fakea eth0", "DEL fakea eth0"]);
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match std::process::Command::new(cmd).args(args).output() {
        Ok(o) => (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => (false, e.to_string()),
    }
}

/// Undoes whatever the real-plugin test left, even when an assertion failed half-way.
struct RealCleanup {
    cni: Cni,
    req: AttachRequest,
    netns_dir: PathBuf,
    bridge: String,
    portmap_chains_existed: bool,
}

impl Drop for RealCleanup {
    fn drop(&mut self) {
        let (cni, req) = (self.cni.clone(), self.req.clone());
        // The test's own runtime is busy with this very drop; DEL on a fresh one.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(cni.teardown(&req));
            }
        })
        .join();
        let _ = netns::remove(&self.req.netns);
        let _ = netns::release_dir(&self.netns_dir);
        let _ = run("ip", &["link", "del", &self.bridge]);
        let (_, nat) = run("iptables-save", &["-t", "nat"]);
        // Leave portmap's shared chains alone while any other pod (":CNI-DN-<hash>") still uses them.
        if !self.portmap_chains_existed && !nat.contains(":CNI-DN-") {
            // portmap leaves its shared top-level chains; remove them when this test made them.
            // iptables-save quotes like a shell, so each jump is deleted through `sh -c`.
            let (_, rules) = run("iptables-save", &["-t", "nat"]);
            for rule in rules.lines().filter(|l| l.starts_with("-A ") && l.contains("-j CNI-HOSTPORT-")) {
                let _ = run("sh", &["-c", &format!("iptables -t nat -D {}", &rule[3..])]);
            }
            for chain in ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"] {
                let _ = run("iptables", &["-t", "nat", "-F", chain]);
                let _ = run("iptables", &["-t", "nat", "-X", chain]);
            }
        }
    }
}

#[tokio::test]
async fn real_plugins_bridge_host_local_portmap_as_root() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: needs root and Debian's CNI plugins in /usr/lib/cni");
        return;
    }
    let pid = std::process::id();
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let bridge = format!("bt{pid}");
    let net = format!("berth-test-{pid}");
    let ipam_dir = tmp.path().join("ipam");
    let list = json!({"cniVersion":"1.0.0","name":net,"plugins":[
        {"type":"bridge","bridge":bridge,"isGateway":true,"ipMasq":false,"hairpinMode":false,
         "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.77.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":ipam_dir}},
        {"type":"portmap","capabilities":{"portMappings":true}}]});
    std::fs::write(conf.join("10-test.conflist"), list.to_string()).unwrap();
    let cfg = NetworkConfig {
        conf_dir: conf,
        plugin_dirs: vec!["/usr/lib/cni".into()],
        cache_dir: tmp.path().join("cache"),
        default_network: String::new(),
    };
    let cni = Cni::new(cfg.clone());
    assert_eq!(cni.status().unwrap(), net);

    let netns_dir = tmp.path().join("netns");
    let ns_name = format!("berth-test-{pid}");
    let ns = netns::create(&netns_dir, &ns_name).unwrap();
    let container_id = format!("berthtest{pid}");
    let host_port = 40000 + (pid % 20000) as u16;
    let req = AttachRequest {
        container_id: container_id.clone(),
        netns: ns.clone(),
        ifname: "eth0".into(),
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        pod_uid: "uid".into(),
        port_mappings: vec![PortMapping { host_port, container_port: 80, protocol: "TCP".into(), host_ip: String::new() }],
    };
    let portmap_chains_existed = run("iptables", &["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]).0;
    let guard =
        RealCleanup { cni: cni.clone(), req: req.clone(), netns_dir: netns_dir.clone(), bridge: bridge.clone(), portmap_chains_existed };

    let res = cni.setup(&req).await.unwrap();
    assert_eq!(res.ips.len(), 1, "{}", res.result);
    let ip = res.ips[0].to_string();
    assert!(ip.starts_with("10.88.77."), "{ip}");
    let nsarg = format!("--net={}", ns.display());
    let (ok, out) = run("nsenter", &[&nsarg, "ip", "-4", "addr", "show", "eth0"]);
    assert!(ok && out.contains(&format!("inet {ip}/24")), "{out}");
    let (ok, out) = run("nsenter", &[&nsarg, "ip", "link", "show", "lo"]);
    assert!(ok && out.contains("<LOOPBACK,UP"), "lo is up: {out}");
    let (_, host_addr) = run("ip", &["-4", "addr", "show"]);
    assert!(!host_addr.contains(&format!("inet {ip}/")), "the pod IP lives only in the netns");
    let (_, nat) = run("iptables-save", &["-t", "nat"]);
    assert!(nat.contains(&container_id) && nat.contains(&format!("--dport {host_port}")), "portmap rules:\n{nat}");
    assert!(ipam_dir.join(&net).join(&ip).exists(), "host-local lease");
    assert!(cache::entry_path(&cfg.cache_dir, &net, &container_id, "eth0").exists());

    cni.teardown(&req).await.unwrap();
    let (_, nat) = run("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains(&container_id), "portmap rules left:\n{nat}");
    assert!(!ipam_dir.join(&net).join(&ip).exists(), "host-local lease released");
    let (_, out) = run("nsenter", &[&nsarg, "ip", "link", "show", "eth0"]);
    assert!(out.contains("does not exist"), "eth0 removed: {out}");
    assert!(cache::find(&cfg.cache_dir, &container_id, "eth0").is_empty());
    // DEL again (e.g. StopPodSandbox retried), then with the netns gone: both fine.
    cni.teardown(&req).await.unwrap();
    netns::remove(&ns).unwrap();
    cni.teardown(&req).await.unwrap();

    // A netns file that no longer holds a namespace (unmounted by hand, or a pin file that
    // outlived a reboot): DEL is sent without a netns, and still releases the lease.
    let ns2 = netns::create(&netns_dir, &format!("{ns_name}-2")).unwrap();
    let req2 = AttachRequest { container_id: format!("{container_id}-2"), netns: ns2.clone(), port_mappings: Vec::new(), ..req.clone() };
    let ip2 = cni.setup(&req2).await.unwrap().ips[0].to_string();
    assert!(ipam_dir.join(&net).join(&ip2).exists());
    nix::mount::umount2(&ns2, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(ns2.exists() && !netns::is_pinned(&ns2));
    cni.teardown(&req2).await.unwrap();
    assert!(!ipam_dir.join(&net).join(&ip2).exists(), "host-local lease of the gone netns released");
    netns::remove(&ns2).unwrap();

    drop(guard);
    assert!(!run("ip", &["link", "show", &bridge]).0, "bridge {bridge} removed");
    assert_eq!(std::fs::read_dir(&netns_dir).unwrap().count(), 0, "netns dir empty");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canon = std::fs::canonicalize(tmp.path()).unwrap();
    assert!(!mounts.contains(&canon.display().to_string()), "nothing mounted under {}", canon.display());
}
