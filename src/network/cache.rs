//! The result cache, in libcni's layout and format so `cnitool`-style tools can read it:
//! `<cache_dir>/results/<network name>-<container id>-<ifname>`, JSON
//! `{"kind":"cniCacheV1","containerId","config":<base64 of the conflist>,"ifName","networkName",
//! "netns","cniArgs":[[k,v]..],"capabilityArgs",{..},"result":{..}}` (libcni `cachedInfo`).
//! Written after a successful ADD, used by DEL (config and `prevResult`), removed after DEL.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::types::NetworkError;

/// libcni's cache format tag.
pub const CACHE_KIND: &str = "cniCacheV1";

/// One cached attachment (libcni `cachedInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The conflist bytes, base64 in the file (Go's `[]byte` JSON encoding).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// `CNI_IFNAME`.
    #[serde(rename = "ifName")]
    pub if_name: String,
    /// The network name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// `CNI_NETNS`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// `CNI_ARGS` as key/value pairs.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    /// The capability args sent at ADD.
    #[serde(rename = "capabilityArgs", default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
    /// The final result of the ADD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// `<cache_dir>/results/<network>-<container_id>-<ifname>`.
pub fn entry_path(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    cache_dir.join("results").join(format!("{network}-{container_id}-{ifname}"))
}

/// Writes `entry` atomically (dir mode 0700, file mode 0600, as libcni does).
/// Errors: [`NetworkError::Cache`] naming the file.
pub fn write(cache_dir: &Path, entry: &CachedAttachment) -> Result<PathBuf, NetworkError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = entry_path(cache_dir, &entry.network_name, &entry.container_id, &entry.if_name);
    let err = |message: String| NetworkError::Cache { path: path.clone(), message };
    let dir = cache_dir.join("results");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| err(format!("create directory: {e}")))?;
    let data = serde_json::to_vec(entry).map_err(|e| err(format!("encode: {e}")))?;
    crate::util::write_atomic(&path, &data).map_err(|e| err(format!("write: {e}")))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(format!("chmod: {e}")))?;
    Ok(path)
}

/// Reads one entry; a missing file is `Ok(None)`.
/// Errors: [`NetworkError::Cache`] when the file is unreadable or not a cache entry.
pub fn read(path: &Path) -> Result<Option<CachedAttachment>, NetworkError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NetworkError::Cache { path: path.into(), message: format!("read: {e}") }),
    };
    serde_json::from_slice(&data).map(Some).map_err(|e| NetworkError::Cache { path: path.into(), message: format!("decode: {e}") })
}

/// Removes one entry; missing is Ok. Errors: [`NetworkError::Cache`].
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::Cache { path: path.into(), message: format!("remove: {e}") }),
    }
}

/// All entries for `container_id` on `ifname` whatever their network name (files named
/// `*-<container_id>-<ifname>`), sorted; used by DEL when the config changed since ADD.
pub fn find(cache_dir: &Path, container_id: &str, ifname: &str) -> Vec<PathBuf> {
    let suffix = format!("-{container_id}-{ifname}");
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache_dir.join("results"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&suffix) && n.len() > suffix.len()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `CNI_ARGS` text (`K=V;K=V`) as pairs.
pub fn split_cni_args(args: &str) -> Vec<[String; 2]> {
    args.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => [k.to_string(), v.to_string()],
            None => [kv.to_string(), String::new()],
        })
        .collect()
}

/// Standard base64 with padding (RFC 4648 §4), the encoding Go's encoding/json uses for `[]byte`.
mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::base64::encode_std(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        crate::base64::decode_std(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}
