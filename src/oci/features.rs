//! What an OCI runtime says it supports: `<runtime> features` (OCI runtime-spec features.md,
//! runc >= 1.1). berth asks once per runtime handler at start and uses the answer for the CRI
//! `RuntimeHandlerFeatures` in Status and to decide what a spec may ask for (e.g. `rro` for
//! CRI `Mount.recursive_read_only`).
//!
//! A runtime without the command (runc < 1.1), one that fails, hangs past [`PROBE_TIMEOUT`] or
//! prints something that is not the features JSON supports nothing here
//! ([`RuntimeFeatures::default`]) and the reason is logged with `tracing::warn!`.

use serde::Deserialize;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `<runtime> features` may run before berth gives up on it (runc answers in ~10 ms).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of a runtime's `features` document berth uses. A runtime without a `features`
/// command (runc < 1.1) supports nothing here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFeatures {
    /// `mountOptions`: the mount options the runtime knows (e.g. `rro` for recursive read-only).
    pub mount_options: Vec<String>,
    /// `linux.namespaces`: the namespace types it can create (`user`, `cgroup`, ...).
    pub namespaces: Vec<String>,
    /// `linux.mountExtensions.idmap.enabled`: it applies a mount's `uidMappings`/`gidMappings`
    /// itself (idmapped mounts).
    pub idmap_mounts: bool,
}

impl RuntimeFeatures {
    /// Whether the runtime knows the `rro` mount option (CRI `Mount.recursive_read_only`).
    pub fn recursive_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "rro")
    }

    /// Whether the runtime can create a user namespace.
    pub fn user_namespaces(&self) -> bool {
        self.namespaces.iter().any(|n| n == "user")
    }
}

/// Why a features document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// The runtime could not be started.
    #[error("running {runtime} features: {source}")]
    Spawn {
        runtime: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than [`PROBE_TIMEOUT`] and was killed.
    #[error("{runtime} features: no answer within {timeout:?}")]
    Timeout { runtime: String, timeout: Duration },
    /// It exited non-zero (e.g. runc < 1.1: "No help topic for 'features'").
    #[error("{runtime} features: exit status {status}: {stderr}")]
    Failed { runtime: String, status: String, stderr: String },
    /// Its stdout is not the OCI features JSON.
    #[error("{runtime} features: output is not the OCI features JSON: {source}")]
    Parse {
        runtime: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The OCI features document (runtime-spec `specs-go/features`), only the fields berth reads.
/// Unknown fields are ignored; missing ones are empty.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    mount_options: Option<Vec<String>>,
    #[serde(default)]
    linux: Option<LinuxDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinuxDoc {
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    mount_extensions: Option<MountExtensions>,
}

#[derive(Debug, Default, Deserialize)]
struct MountExtensions {
    #[serde(default)]
    idmap: Option<IdMap>,
}

#[derive(Debug, Default, Deserialize)]
struct IdMap {
    #[serde(default)]
    enabled: Option<bool>,
}

/// Parses a `features` document (OCI runtime-spec features.md: `mountOptions`,
/// `linux.namespaces`, `linux.mountExtensions.idmap.enabled`). Absent fields mean "not
/// supported". Errors: the JSON error when `json` is not a JSON object of that shape.
pub fn parse(json: &[u8]) -> Result<RuntimeFeatures, serde_json::Error> {
    let d: Document = serde_json::from_slice(json)?;
    let linux = d.linux.unwrap_or_default();
    Ok(RuntimeFeatures {
        mount_options: d.mount_options.unwrap_or_default(),
        namespaces: linux.namespaces.unwrap_or_default(),
        idmap_mounts: linux.mount_extensions.and_then(|m| m.idmap).and_then(|i| i.enabled).unwrap_or(false),
    })
}

/// Runs `<runtime> features` (stdin closed, at most `timeout`) and parses its stdout.
/// Errors: see [`FeaturesError`]; a runtime still running at the deadline is killed (by its pid)
/// and reaped.
pub fn run_features(runtime: &Path, timeout: Duration) -> Result<RuntimeFeatures, FeaturesError> {
    let name = runtime.display().to_string();
    let mut child = Command::new(runtime)
        .arg("features")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FeaturesError::Spawn { runtime: name.clone(), source })?;
    // Read both pipes on threads so a chatty runtime cannot block on a full pipe while we wait.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FeaturesError::Timeout { runtime: name, timeout });
            }
            Err(source) => return Err(FeaturesError::Spawn { runtime: name, source }),
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(FeaturesError::Failed {
            runtime: name,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    parse(&stdout).map_err(|source| FeaturesError::Parse { runtime: name, source })
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs `<runtime> features` (at most [`PROBE_TIMEOUT`]) and parses its output. Never fails:
/// any error is logged with `tracing::warn!` and gives [`RuntimeFeatures::default`] (nothing
/// supported), so a runtime without the command still serves.
pub fn probe(runtime: &Path) -> RuntimeFeatures {
    match run_features(runtime, PROBE_TIMEOUT) {
        Ok(f) => {
            tracing::debug!(runtime = %runtime.display(), ?f, "runtime features");
            f
        }
        Err(e) => {
            tracing::warn!(error = %e, "runtime features unknown: treating every optional feature as unsupported");
            RuntimeFeatures::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_1_1_5: &str = include_str!("testdata/runc-1.1.5-features.json");

    #[test]
    fn parses_runc_1_1_5() {
        let f = parse(RUNC_1_1_5.as_bytes()).unwrap();
        assert!(f.recursive_read_only());
        assert!(f.user_namespaces());
        assert!(!f.idmap_mounts);
        assert_eq!(f.namespaces, ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]);
        assert!(f.mount_options.iter().any(|o| o == "rslave"));
    }

    #[test]
    fn parses_idmap_enabled() {
        // runc 1.2 shape.
        let j = br#"{"ociVersionMin":"1.0.0","mountOptions":["rro"],
            "linux":{"namespaces":["user"],"mountExtensions":{"idmap":{"enabled":true}}}}"#;
        let f = parse(j).unwrap();
        assert!(f.idmap_mounts && f.recursive_read_only() && f.user_namespaces());
        let j = br#"{"linux":{"mountExtensions":{"idmap":{"enabled":false}}}}"#;
        assert!(!parse(j).unwrap().idmap_mounts);
    }

    #[test]
    fn missing_fields_mean_unsupported() {
        assert_eq!(parse(b"{}").unwrap(), RuntimeFeatures::default());
        assert_eq!(parse(br#"{"mountOptions":null,"linux":null}"#).unwrap(), RuntimeFeatures::default());
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse(b"No help topic for 'features'").is_err());
        assert!(parse(br#"{"mountOptions":"rro"}"#).is_err());
    }

    #[test]
    fn probe_without_the_command_is_default() {
        // `false` exits 1 whatever its arguments: a runtime without `features`.
        assert_eq!(probe(Path::new("/bin/false")), RuntimeFeatures::default());
        assert!(matches!(run_features(Path::new("/bin/false"), PROBE_TIMEOUT), Err(FeaturesError::Failed { .. })));
        // `echo features` prints non-JSON.
        assert!(matches!(run_features(Path::new("/bin/echo"), PROBE_TIMEOUT), Err(FeaturesError::Parse { .. })));
        assert!(matches!(run_features(Path::new("/nonexistent/runc"), PROBE_TIMEOUT), Err(FeaturesError::Spawn { .. })));
    }

    #[test]
    fn probe_times_out() {
        // `sleep features` fails fast ("invalid time interval"), so use a script that hangs.
        let dir = std::env::temp_dir().join(format!("berth-features-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("slow-runtime");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 10\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let t = Instant::now();
        let r = run_features(&script, Duration::from_millis(300));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(r, Err(FeaturesError::Timeout { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn probes_real_runc() {
        let runc = Path::new("/usr/sbin/runc");
        if !runc.exists() {
            eprintln!("skipped: no /usr/sbin/runc");
            return;
        }
        let f = probe(runc);
        assert!(f.recursive_read_only(), "{f:?}");
        assert!(f.user_namespaces(), "{f:?}");
    }
}
