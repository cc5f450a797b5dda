//! The per-pod files every container bind-mounts: `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf`. Pure text builders plus one writer.

use crate::cri::v1::DnsConfig;

/// `/etc/hosts` for a pod with its own network namespace: loopback entries and the pod's IPs
/// bound to its hostname (what containerd and CRI-O write; kubelet may replace it with its own
/// managed hosts file through a CRI mount).
pub fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff00::1\tip6-allnodes\nff00::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf` from the CRI DNSConfig (`servers`, `searches`, `options`), in the order
/// resolv.conf(5) expects. `None` when the config is empty: the caller then copies the host's.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> Option<String> {
    let dns = dns?;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

/// Checks a hostname as RFC 1123 labels (what the kernel's sethostname and Kubernetes accept):
/// at most 64 bytes, labels of letters, digits and '-'.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    if h.len() > 64 {
        return Err(format!("{h:?} is longer than 64 bytes"));
    }
    if h.split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-') || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(format!("{h:?} is not a valid RFC 1123 hostname"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_orders_search_servers_options() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(Some(&DnsConfig::default())), None);
        assert_eq!(resolv_conf(None), None);
    }

    #[test]
    fn hosts_lists_pod_ips() {
        let h = hosts_file("web-0", &["10.88.0.5".into()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb-0\n"));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(validate_hostname("web-0").is_ok());
        assert!(validate_hostname("a.b-c.d").is_ok());
        assert!(validate_hostname("-bad").is_err());
        assert!(validate_hostname("bad_name").is_err());
        assert!(validate_hostname(&"x".repeat(65)).is_err());
    }
}
