//! Running one CNI plugin: the environment and stdin contract of CNI SPEC.md "Execution
//! Protocol", config injection as libcni's `buildOneConfig` does it, error JSON, result IPs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::types::{AttachRequest, NetworkError};

/// PATH given to plugins when the daemon has none (plugins call `iptables`, `ip`, ...).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The per-invocation CNI environment (minus `CNI_COMMAND`), shared by every plugin of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may name a namespace that is already gone on DEL; plugins tolerate that).
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, already joined (`K=V;K=V`).
    pub cni_args: String,
    /// `CNI_PATH`: the plugin dirs joined by `:`.
    pub cni_path: String,
}

impl Invocation {
    /// The invocation for `req` on `ifname` with plugins searched in `plugin_dirs`.
    pub fn new(req: &AttachRequest, ifname: &str, plugin_dirs: &[PathBuf]) -> Invocation {
        Invocation {
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: ifname.into(),
            cni_args: cni_args(req),
            cni_path: plugin_dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":"),
        }
    }
}

/// `CNI_ARGS` as CRI-O and containerd send it for a pod:
/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=<ns>;K8S_POD_NAME=<name>;K8S_POD_INFRA_CONTAINER_ID=<id>;K8S_POD_UID=<uid>`.
pub fn cni_args(req: &AttachRequest) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        req.pod_namespace, req.pod_name, req.container_id, req.pod_uid
    )
}

/// The capability args berth offers (libcni `RuntimeConf.CapabilityArgs`): `portMappings` as
/// `[{hostPort, containerPort, protocol, hostIP?}]`, present only when some mapping has a host
/// port (mappings with `host_port == 0` are skipped, as CRI-O does).
pub fn capability_args(req: &AttachRequest) -> Map<String, Value> {
    let mut caps = Map::new();
    let pms: Vec<Value> = req
        .port_mappings
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| {
            let mut m = Map::new();
            m.insert("hostPort".into(), p.host_port.into());
            m.insert("containerPort".into(), p.container_port.into());
            let proto = if p.protocol.is_empty() { "tcp".to_string() } else { p.protocol.to_ascii_lowercase() };
            m.insert("protocol".into(), proto.into());
            if !p.host_ip.is_empty() {
                m.insert("hostIP".into(), p.host_ip.clone().into());
            }
            Value::Object(m)
        })
        .collect();
    if !pms.is_empty() {
        caps.insert("portMappings".into(), Value::Array(pms));
    }
    caps
}

/// The stdin config of one plugin of a list (libcni `buildOneConfig`): the plugin's object with
/// the list's `name` and `cniVersion` injected, `prevResult` when given, and `runtimeConfig`
/// holding those `capability_args` the plugin declares in `capabilities` (`{"portMappings": true}`);
/// `runtimeConfig` is left as the file had it when no capability applies.
pub fn plugin_config(
    plugin: &Value,
    name: &str,
    cni_version: &str,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut obj = plugin.as_object().cloned().unwrap_or_default();
    obj.insert("name".into(), name.into());
    obj.insert("cniVersion".into(), cni_version.into());
    if let Some(prev) = prev_result {
        obj.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    if let Some(Value::Object(caps)) = obj.get("capabilities") {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(arg) = capability_args.get(cap) {
                    rc.insert(cap.clone(), arg.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        obj.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(obj)
}

/// The binary for plugin `plugin_type`: the first `<dir>/<type>` that is a file, dirs in order.
/// Errors: [`NetworkError::PluginNotFound`] listing the dirs searched.
pub fn find_plugin(plugin_dirs: &[PathBuf], plugin_type: &str) -> Result<PathBuf, NetworkError> {
    if !plugin_type.contains('/') {
        for d in plugin_dirs {
            let p = d.join(plugin_type);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(NetworkError::PluginNotFound {
        plugin: plugin_type.into(),
        dirs: plugin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Runs `binary` with `CNI_COMMAND=command` and the invocation's env (environment cleared but
/// for PATH), `config` on stdin; returns its stdout parsed as JSON (`None` when empty, which DEL
/// and CHECK allow). The child is killed if the returned future is dropped (e.g. on timeout).
/// Errors: [`NetworkError::PluginSpawn`], [`NetworkError::PluginFailed`] (non-zero exit, with the
/// CNI error JSON `{code,msg,details}` decoded when printed), [`NetworkError::BadResult`].
pub async fn exec_plugin(
    binary: &Path,
    command: &'static str,
    inv: &Invocation,
    network: &str,
    config: &Value,
) -> Result<Option<Value>, NetworkError> {
    let plugin = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let spawn_err = |source: std::io::Error| NetworkError::PluginSpawn { plugin: plugin.clone(), command, source };
    let path = std::env::var_os("PATH").filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_PATH.into());
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("PATH", path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.cni_args)
        .env("CNI_PATH", &inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit before reading stdin (e.g. a broken binary); its exit status tells why.
        let _ = stdin.write_all(&bytes).await;
        drop(stdin);
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    tracing::debug!(plugin = %plugin, command, status = ?out.status, "CNI plugin ran");
    if !out.status.success() {
        let (code, msg, details) = decode_error(&out.stdout, &out.stderr, &out.status);
        return Err(NetworkError::PluginFailed { plugin, command, network: network.into(), code, msg, details });
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| NetworkError::BadResult { plugin, command, message: e.to_string() })
}

/// `(code, msg, details)` from a failed plugin: its CNI error JSON on stdout (SPEC.md "Error":
/// `{"cniVersion","code","msg","details"}`), else its stderr/stdout text with code 999
/// ("unknown", as libcni reports a plugin that printed no error object).
fn decode_error(stdout: &[u8], stderr: &[u8], status: &std::process::ExitStatus) -> (i64, String, String) {
    if let Ok(Value::Object(e)) = serde_json::from_slice::<Value>(stdout) {
        if e.contains_key("msg") || e.contains_key("code") {
            let code = e.get("code").and_then(Value::as_i64).unwrap_or(999);
            let msg = e.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
            let details = e.get("details").and_then(Value::as_str).unwrap_or("").to_string();
            return (code, msg, details);
        }
    }
    let text = String::from_utf8_lossy(if stderr.iter().all(u8::is_ascii_whitespace) { stdout } else { stderr });
    let text = text.trim();
    let msg = if text.is_empty() { format!("exited with {status} and printed nothing") } else { text.to_string() };
    (999, msg, String::new())
}

/// The addresses of a CNI result, IPv4 first then IPv6, each in result order:
/// `ips[].address` (`10.88.0.5/16`; CNI 0.3.x, 0.4.0, 1.0.0) or `ip4.ip` / `ip6.ip` (0.1/0.2).
/// Unparsable entries are skipped.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = Vec::new();
    let parse = |v: Option<&Value>| -> Option<IpAddr> {
        let s = v?.as_str()?;
        s.split('/').next()?.parse().ok()
    };
    if let Some(Value::Array(ips)) = result.get("ips") {
        all.extend(ips.iter().filter_map(|e| parse(e.get("address"))));
    } else {
        for k in ["ip4", "ip6"] {
            if let Some(ip) = parse(result.get(k).and_then(|o| o.get("ip"))) {
                all.push(ip);
            }
        }
    }
    let (mut v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = all.into_iter().partition(IpAddr::is_ipv4);
    v4.extend(v6);
    v4
}

/// Whether `cni_version` is at least `major.minor` (e.g. `0.4.0` ≥ 0.4); unparsable = false.
pub fn version_at_least(cni_version: &str, major: u64, minor: u64) -> bool {
    let mut it = cni_version.split('.').map(|p| p.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::PortMapping;
    use serde_json::json;

    fn req(pms: Vec<PortMapping>) -> AttachRequest {
        AttachRequest {
            container_id: "sb1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "u-1".into(),
            port_mappings: pms,
        }
    }

    fn pm(host: u16, cont: u16, proto: &str, ip: &str) -> PortMapping {
        PortMapping { host_port: host, container_port: cont, protocol: proto.into(), host_ip: ip.into() }
    }

    #[test]
    fn cni_args_carry_the_pod() {
        assert_eq!(
            cni_args(&req(vec![])),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
        );
        let inv = Invocation::new(&req(vec![]), "eth0", &["/opt/cni/bin".into(), "/usr/lib/cni".into()]);
        assert_eq!(inv.cni_path, "/opt/cni/bin:/usr/lib/cni");
    }

    #[test]
    fn port_mappings_become_capability_args() {
        let caps = capability_args(&req(vec![pm(8080, 80, "TCP", ""), pm(0, 53, "udp", ""), pm(5353, 53, "UDP", "127.0.0.1")]));
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}])
        );
        assert!(capability_args(&req(vec![pm(0, 80, "tcp", "")])).is_empty());
    }

    #[test]
    fn plugin_config_injection() {
        let caps = capability_args(&req(vec![pm(8080, 80, "tcp", "")]));
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let portmap = json!({"type":"portmap","capabilities":{"portMappings":true},"name":"stale"});
        let c = plugin_config(&portmap, "net", "1.0.0", Some(&prev), &caps);
        assert_eq!(c["name"], "net");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["runtimeConfig"], json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}));
        // No capability declared (or declared false): no runtimeConfig; first plugin: no prevResult.
        let bridge = json!({"type":"bridge","capabilities":{"portMappings":false}});
        let c = plugin_config(&bridge, "net", "1.0.0", None, &caps);
        assert!(c.get("runtimeConfig").is_none() && c.get("prevResult").is_none(), "{c}");
        assert_eq!(c["type"], "bridge");
        // Capability declared but nothing to send: runtimeConfig untouched.
        let c = plugin_config(&portmap, "net", "1.0.0", None, &Map::new());
        assert!(c.get("runtimeConfig").is_none(), "{c}");
    }

    #[test]
    fn result_ips_of_each_version() {
        let v1 = json!({"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"},{"address":"10.88.0.5/16","gateway":"10.88.0.1"},{"address":"bad"}]});
        assert_eq!(result_ips(&v1), vec!["10.88.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        let v02 = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.3/24"},"ip6":{"ip":"fd01::3/64"}});
        assert_eq!(result_ips(&v02), vec!["10.1.0.3".parse::<IpAddr>().unwrap(), "fd01::3".parse().unwrap()]);
        assert!(result_ips(&json!({"cniVersion":"1.0.0"})).is_empty());
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("0.4.0", 0, 4));
        assert!(version_at_least("1.0.0", 0, 4));
        assert!(!version_at_least("0.3.1", 0, 4));
        assert!(!version_at_least("garbage", 0, 4));
    }

    #[test]
    fn error_json_is_decoded() {
        use std::os::unix::process::ExitStatusExt;
        let st = std::process::ExitStatus::from_raw(256);
        let (c, m, d) =
            decode_error(br#"{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range full"}"#, b"", &st);
        assert_eq!((c, m.as_str(), d.as_str()), (11, "no IP addresses available", "range full"));
        let (c, m, _) = decode_error(b"", b"panic: oops\n", &st);
        assert_eq!((c, m.as_str()), (999, "panic: oops"));
        let (_, m, _) = decode_error(b"", b"", &st);
        assert!(m.contains("printed nothing"), "{m}");
    }

    #[test]
    fn plugins_are_found_in_dir_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("bridge"), "").unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin(&dirs, "bridge").unwrap(), b.path().join("bridge"));
        std::fs::write(a.path().join("bridge"), "").unwrap();
        assert_eq!(find_plugin(&dirs, "bridge").unwrap(), a.path().join("bridge"));
        let e = find_plugin(&dirs, "nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains(&a.path().display().to_string()), "{e}");
        assert!(find_plugin(&dirs, "../bridge").is_err());
    }
}
