//! Loading the pod network from the CNI conf dir, as libcni's `ConfFiles`/`ConfListFromFile` and
//! CRI-O's ocicni choose it.
//!
//! Files `*.conflist`, `*.conf` and `*.json` are read in lexical order of their names. A file that
//! does not parse or validate is skipped (and named in the error when nothing is found). The first
//! valid network wins, or, when `default_network` is set, the valid network of that name. A `.conf`
//! or `.json` file holding one plugin is wrapped into a one-plugin list (libcni
//! `ConfListFromConf`); one that holds a `plugins` array is read as a list.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::types::NetworkError;
use crate::config::NetworkConfig;

/// A validated network configuration list (CNI SPEC.md "Network configuration lists").
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfList {
    /// The list's `name` (the network name; part of the result cache key).
    pub name: String,
    /// The list's `cniVersion`, e.g. `1.0.0`; injected into every plugin's config.
    pub cni_version: String,
    /// Each plugin's config object, in list order; each has a non-empty string `type`.
    pub plugins: Vec<Value>,
    /// The whole list as JSON (what the result cache stores as `config`).
    pub raw: Value,
    /// Where it came from (a file path, or `<cache>` / `<built-in>`).
    pub source: PathBuf,
}

impl NetworkConfList {
    /// Validates a parsed conflist: `name` and `cniVersion` are non-empty strings, `plugins` is a
    /// non-empty array of objects each with a non-empty string `type`.
    /// Errors: [`NetworkError::BadConfig`] naming `source` and the field.
    pub fn from_value(raw: Value, source: &Path) -> Result<NetworkConfList, NetworkError> {
        let bad = |field: &str, message: &str| NetworkError::BadConfig {
            path: source.to_path_buf(),
            field: field.into(),
            message: message.into(),
        };
        let obj = raw.as_object().ok_or_else(|| bad("<top level>", "expected a JSON object"))?;
        let name = non_empty_str(obj.get("name")).ok_or_else(|| bad("name", "expected a non-empty string"))?;
        let cni_version =
            non_empty_str(obj.get("cniVersion")).ok_or_else(|| bad("cniVersion", "expected a non-empty string such as \"1.0.0\""))?;
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p.clone(),
            Some(Value::Array(_)) => return Err(bad("plugins", "the list is empty; expected at least one plugin")),
            _ => return Err(bad("plugins", "expected an array of plugin configs")),
        };
        for (i, p) in plugins.iter().enumerate() {
            if !p.is_object() {
                return Err(bad(&format!("plugins[{i}]"), "expected a JSON object"));
            }
            if non_empty_str(p.get("type")).is_none() {
                return Err(bad(&format!("plugins[{i}].type"), "expected a non-empty string naming the plugin binary"));
            }
        }
        Ok(NetworkConfList { name, cni_version, plugins, raw, source: source.to_path_buf() })
    }

    /// Wraps a single-plugin config (`.conf`) into a list, as libcni's `ConfListFromConf` does:
    /// the list takes the plugin's `name` and `cniVersion`, the plugin keeps its whole object.
    pub fn from_single(conf: Value, source: &Path) -> Result<NetworkConfList, NetworkError> {
        let bad = |field: &str, message: &str| NetworkError::BadConfig {
            path: source.to_path_buf(),
            field: field.into(),
            message: message.into(),
        };
        let obj = conf.as_object().ok_or_else(|| bad("<top level>", "expected a JSON object"))?;
        if non_empty_str(obj.get("type")).is_none() {
            return Err(bad("type", "expected a non-empty string naming the plugin binary"));
        }
        let list = serde_json::json!({
            "name": obj.get("name").cloned().unwrap_or(Value::Null),
            "cniVersion": obj.get("cniVersion").cloned().unwrap_or(Value::Null),
            "plugins": [conf.clone()],
        });
        NetworkConfList::from_value(list, source)
    }

    /// The loopback network an older berth attached on `lo` (as CRI-O does):
    /// `{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}`. berth brings `lo` up
    /// itself now; this config only DELs such an attachment whose cache entry is unusable.
    pub fn loopback() -> NetworkConfList {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": LOOPBACK_NETWORK, "type": "loopback"});
        let raw = serde_json::json!({"cniVersion": "1.0.0", "name": LOOPBACK_NETWORK, "plugins": [conf]});
        NetworkConfList {
            name: LOOPBACK_NETWORK.into(),
            cni_version: "1.0.0".into(),
            plugins: vec![conf],
            raw,
            source: "<built-in>".into(),
        }
    }
}

/// Name of the loopback network an older berth attached on `lo`.
pub const LOOPBACK_NETWORK: &str = "cni-loopback";

fn non_empty_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Reads and validates one config file (by extension: `.conflist` is a list; `.conf`/`.json` a
/// single plugin, or a list when it has `plugins`).
/// Errors: [`NetworkError::BadConfig`] naming the file and field (`<file>` when unreadable,
/// `<json>` when it does not parse).
pub fn load_file(path: &Path) -> Result<NetworkConfList, NetworkError> {
    let text = std::fs::read(path).map_err(|e| NetworkError::BadConfig {
        path: path.to_path_buf(),
        field: "<file>".into(),
        message: format!("cannot read: {e}"),
    })?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| NetworkError::BadConfig {
        path: path.to_path_buf(),
        field: "<json>".into(),
        message: e.to_string(),
    })?;
    let is_list = path.extension().is_some_and(|e| e == "conflist") || v.get("plugins").is_some();
    if is_list {
        NetworkConfList::from_value(v, path)
    } else {
        NetworkConfList::from_single(v, path)
    }
}

/// The config files of `dir` (`*.conflist`, `*.conf`, `*.json`) sorted lexically by name.
/// A missing directory yields an empty list.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, NetworkError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(NetworkError::BadConfig { path: dir.to_path_buf(), field: "<dir>".into(), message: format!("cannot read: {e}") })
        }
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads the pod network of `cfg.conf_dir` (see the module docs for the choice).
/// Errors: [`NetworkError::NoConfig`] when no file is valid (invalid files are listed in it),
/// [`NetworkError::NetworkNotFound`] when `default_network` names no valid network.
pub fn load_network(cfg: &NetworkConfig) -> Result<NetworkConfList, NetworkError> {
    let dir = &cfg.conf_dir;
    let mut skipped = Vec::new();
    let mut valid = Vec::new();
    for f in conf_files(dir)? {
        match load_file(&f) {
            Ok(list) => {
                if cfg.default_network.is_empty() || list.name == cfg.default_network {
                    return Ok(list);
                }
                valid.push(list.name);
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping invalid CNI config");
                skipped.push(e.to_string());
            }
        }
    }
    if !valid.is_empty() {
        return Err(NetworkError::NetworkNotFound { name: cfg.default_network.clone(), dir: dir.clone(), found: valid.join(", ") });
    }
    let detail = if skipped.is_empty() { String::new() } else { format!(" (invalid: {})", skipped.join("; ")) };
    if !cfg.default_network.is_empty() && skipped.is_empty() {
        return Err(NetworkError::NoConfig { dir: dir.clone(), detail: format!(" (looking for network {:?})", cfg.default_network) });
    }
    Err(NetworkError::NoConfig { dir: dir.clone(), detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, default_network: &str) -> NetworkConfig {
        NetworkConfig { conf_dir: dir.into(), default_network: default_network.into(), ..NetworkConfig::default() }
    }

    fn list(name: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge"}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
        )
    }

    #[test]
    fn first_file_in_lexical_order_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("20-b.conflist"), list("b")).unwrap();
        std::fs::write(d.path().join("10-a.conflist"), list("a")).unwrap();
        std::fs::write(d.path().join("05-ignored.txt"), list("txt")).unwrap();
        let n = load_network(&cfg(d.path(), "")).unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(n.plugins.len(), 2);
        assert_eq!(n.source, d.path().join("10-a.conflist"));
        assert_eq!(load_network(&cfg(d.path(), "b")).unwrap().name, "b");
        let e = load_network(&cfg(d.path(), "c")).unwrap_err().to_string();
        assert!(e.contains("\"c\"") && e.contains("a, b"), "{e}");
    }

    #[test]
    fn single_conf_is_wrapped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("10-x.conf"), r#"{"cniVersion":"0.4.0","name":"x","type":"bridge","bridge":"cni0"}"#).unwrap();
        let n = load_network(&cfg(d.path(), "")).unwrap();
        assert_eq!((n.name.as_str(), n.cni_version.as_str()), ("x", "0.4.0"));
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0]["bridge"], "cni0");
        assert_eq!(n.raw["plugins"][0]["type"], "bridge");
        // A .json file holding a list is read as a list.
        std::fs::write(d.path().join("05-l.json"), list("l")).unwrap();
        assert_eq!(load_network(&cfg(d.path(), "")).unwrap().name, "l");
    }

    #[test]
    fn invalid_files_are_skipped_and_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("01-syntax.conflist"), "{not json").unwrap();
        std::fs::write(d.path().join("02-noname.conflist"), r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#).unwrap();
        std::fs::write(d.path().join("03-empty.conflist"), r#"{"cniVersion":"1.0.0","name":"e","plugins":[]}"#).unwrap();
        std::fs::write(d.path().join("04-notype.conflist"), r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"bridge":"x"}]}"#).unwrap();
        std::fs::write(d.path().join("05-nover.conf"), r#"{"name":"v","type":"bridge"}"#).unwrap();
        let e = load_network(&cfg(d.path(), "")).unwrap_err();
        assert!(matches!(e, NetworkError::NoConfig { .. }));
        let e = e.to_string();
        for want in [
            "no CNI network config found in",
            "01-syntax.conflist: <json>",
            "02-noname.conflist: name",
            "03-empty.conflist: plugins",
            "04-notype.conflist: plugins[0].type",
            "05-nover.conf: cniVersion",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        std::fs::write(d.path().join("99-good.conflist"), list("good")).unwrap();
        assert_eq!(load_network(&cfg(d.path(), "")).unwrap().name, "good");
    }

    #[test]
    fn missing_or_empty_dir_is_no_config() {
        let d = tempfile::tempdir().unwrap();
        let e = load_network(&cfg(&d.path().join("absent"), "")).unwrap_err().to_string();
        assert_eq!(e, format!("no CNI network config found in {}", d.path().join("absent").display()));
        assert!(matches!(load_network(&cfg(d.path(), "")), Err(NetworkError::NoConfig { .. })));
    }
}
