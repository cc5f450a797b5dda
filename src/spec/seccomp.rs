//! Seccomp for containers: CRI `LinuxContainerSecurityContext.seccomp` (and the deprecated
//! `seccomp_profile_path`) -> OCI `linux.seccomp` (runtime-spec config-linux.md "Seccomp").
//!
//! Profiles are read in the Docker/moby JSON format (`defaultAction`, `defaultErrnoRet`,
//! `architectures` or `archMap`, `syscalls[]` with `name`/`names`, `action`, `errnoRet`, `args`,
//! `includes`/`excludes` {`caps`, `arches`, `minKernel`}, `flags`) and converted as moby's
//! `profiles/seccomp` does: a rule is kept when every `includes` condition holds and no
//! `excludes` condition does, judged against the container's final capability set, the host
//! architecture (Go names: `amd64`, `arm64`, ...) and the host kernel version. RuntimeDefault is
//! berth's own profile (`seccomp_default.json`, documented in docs/security.md), converted by the
//! same code. Privileged containers, `Unconfined` and an empty request run unconfined.

use crate::cri::v1 as cri;
use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// berth's RuntimeDefault profile, in the Docker JSON format.
pub const DEFAULT_PROFILE_JSON: &str = include_str!("seccomp_default.json");

/// Errors choosing, reading or converting a seccomp profile. Each names the field or the file.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A Localhost profile path is not absolute or names no readable file.
    #[error("{field}: localhost profile {path:?}: {reason}")]
    Localhost { field: &'static str, path: PathBuf, reason: String },
    /// `seccomp_profile_path` is none of the known forms.
    #[error(
        "seccomp_profile_path {value:?}: expected \"runtime/default\", \"docker/default\", \"unconfined\" or \"localhost/<absolute path>\""
    )]
    UnknownPath { value: String },
    /// `seccomp.profile_type` is not a known `SecurityProfile.ProfileType`.
    #[error("seccomp.profile_type {value}: expected RuntimeDefault (0), Unconfined (1) or Localhost (2)")]
    UnknownType { value: i32 },
    /// The profile is not valid Docker-format JSON or has a value OCI does not know.
    #[error("seccomp profile {source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
}

/// The profile a container asked for, after reading both CRI fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// No filter.
    Unconfined,
    /// berth's default profile.
    RuntimeDefault,
    /// A Docker-format profile file on the host (absolute path); `field` names the CRI field.
    Localhost { path: PathBuf, field: &'static str },
}

/// Which profile a container gets: `seccomp` (the structured field) wins over the deprecated
/// `seccomp_profile_path`; both empty = Unconfined (what containerd does; kubelet sends
/// RuntimeDefault when the pod asks for it). Errors: an unknown type or path form, a Localhost
/// reference that is not absolute.
#[allow(deprecated)] // seccomp_profile_path is deprecated in CRI but still sent by older kubelets
pub fn choose(sc: &cri::LinuxContainerSecurityContext) -> Result<Choice, SeccompError> {
    if let Some(p) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost("seccomp.localhost_ref", &p.localhost_ref),
            Err(_) => Err(SeccompError::UnknownType { value: p.profile_type }),
        };
    }
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        v => match v.strip_prefix("localhost/") {
            Some(path) => localhost("seccomp_profile_path", path),
            None => Err(SeccompError::UnknownPath { value: v.to_string() }),
        },
    }
}

fn localhost(field: &'static str, path: &str) -> Result<Choice, SeccompError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(SeccompError::Localhost { field, path: p, reason: "expected an absolute path".into() });
    }
    Ok(Choice::Localhost { path: p, field })
}

/// The container's `linux.seccomp`: `None` when privileged or unconfined, else the chosen
/// profile converted for `caps` (the final effective set) on this host. A Localhost file that
/// cannot be read is [`SeccompError::Localhost`] naming the path.
pub fn container_seccomp(sc: &cri::LinuxContainerSecurityContext, caps: &[Capability]) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let choice = choose(sc)?;
    if sc.privileged {
        return Ok(None);
    }
    let host = Host::probe();
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => convert(DEFAULT_PROFILE_JSON, "RuntimeDefault", caps, &host).map(Some),
        Choice::Localhost { path, field } => {
            let text = read_profile(&path).map_err(|e| SeccompError::Localhost { field, path: path.clone(), reason: e.to_string() })?;
            convert(&text, &path.display().to_string(), caps, &host).map(Some)
        }
    }
}

/// The largest Localhost profile berth reads (Docker's default profile is ~20 KiB).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Reads a Localhost profile: a regular file of at most [`MAX_PROFILE_BYTES`]. Opened with
/// `O_NONBLOCK` and checked with `fstat` before any read, so a FIFO, a device such as
/// `/dev/zero` or a directory named as a profile is refused at once instead of blocking the
/// daemon or filling its memory.
pub fn read_profile(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes: larger than the {MAX_PROFILE_BYTES}-byte limit", meta.len()),
        ));
    }
    let mut text = String::new();
    f.take(MAX_PROFILE_BYTES + 1).read_to_string(&mut text)?;
    Ok(text)
}

/// Host facts a profile's `includes`/`excludes` are judged against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Go architecture name (`amd64`, `arm64`, `386`, `arm`, `s390x`, `ppc64le`, `riscv64`).
    pub go_arch: &'static str,
    /// libseccomp name of the native architecture (`SCMP_ARCH_X86_64`, ...).
    pub scmp_arch: &'static str,
    /// Kernel (major, minor) from `uname -r`; (0, 0) when unreadable.
    pub kernel: (u32, u32),
}

impl Host {
    /// The compile-time architecture and the running kernel's version.
    pub fn probe() -> Host {
        let (go_arch, scmp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
            "x86" => ("386", "SCMP_ARCH_X86"),
            "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
            "arm" => ("arm", "SCMP_ARCH_ARM"),
            "s390x" => ("s390x", "SCMP_ARCH_S390X"),
            "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
            "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
            other => (other, "SCMP_ARCH_NATIVE"),
        };
        let kernel = nix::sys::utsname::uname().ok().and_then(|u| parse_kernel(&u.release().to_string_lossy())).unwrap_or((0, 0));
        Host { go_arch, scmp_arch, kernel }
    }
}

/// `"6.1.0-18-amd64"` -> (6, 1); `"4.8"` -> (4, 8).
pub fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

fn cap_name(c: &Capability) -> String {
    serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn norm_cap(s: &str) -> String {
    let u = s.to_ascii_uppercase();
    if u.starts_with("CAP_") {
        u
    } else {
        format!("CAP_{u}")
    }
}

/// Converts a Docker-format profile to OCI `linux.seccomp` for a container with capability set
/// `caps` on `host`. `source_name` names the profile in errors. Rules whose `includes` fail or
/// whose `excludes` match are dropped; `archMap` keeps the entry of the native architecture with
/// its sub-architectures; `architectures` is taken as is (both given is an error, as in moby).
pub fn convert(text: &str, source_name: &str, caps: &[Capability], host: &Host) -> Result<LinuxSeccomp, SeccompError> {
    let bad = |reason: String| SeccompError::Invalid { source_name: source_name.to_string(), reason };
    let p: DockerProfile = serde_json::from_str(text).map_err(|e| bad(format!("not Docker-format JSON: {e}")))?;
    if !p.architectures.is_empty() && !p.arch_map.is_empty() {
        return Err(bad("both architectures and archMap are given: expected one".into()));
    }
    let mut arches = p.architectures.clone();
    for a in &p.arch_map {
        if a.architecture == host.scmp_arch {
            arches.push(a.architecture.clone());
            arches.extend(a.sub_architectures.clone().unwrap_or_default());
        }
    }
    let caps: Vec<String> = caps.iter().map(cap_name).collect();
    let has_cap = |c: &String| caps.contains(&norm_cap(c));
    let arch_is = |a: &String| a == host.go_arch;
    let kernel_at_least = |v: &str| -> Result<bool, SeccompError> {
        let want = parse_kernel(v).ok_or_else(|| bad(format!("minKernel {v:?}: expected MAJOR.MINOR")))?;
        Ok(host.kernel >= want)
    };
    let mut rules = Vec::new();
    for (i, s) in p.syscalls.iter().enumerate() {
        if !s.name.is_empty() && !s.names.is_empty() {
            return Err(bad(format!("syscalls[{i}]: both name and names are given: expected one")));
        }
        let names = if s.names.is_empty() { vec![s.name.clone()] } else { s.names.clone() };
        if names.iter().any(String::is_empty) {
            return Err(bad(format!("syscalls[{i}]: empty syscall name")));
        }
        let ex = &s.excludes;
        if ex.arches.iter().any(arch_is) || ex.caps.iter().any(has_cap) {
            continue;
        }
        if let Some(v) = &ex.min_kernel {
            if kernel_at_least(v)? {
                continue;
            }
        }
        let inc = &s.includes;
        if (!inc.arches.is_empty() && !inc.arches.iter().any(arch_is)) || !inc.caps.iter().all(has_cap) {
            continue;
        }
        if let Some(v) = &inc.min_kernel {
            if !kernel_at_least(v)? {
                continue;
            }
        }
        let mut rule = json!({"names": names, "action": s.action});
        if let Some(e) = s.errno_ret {
            rule["errnoRet"] = json!(e);
        }
        if let Some(args) = &s.args {
            rule["args"] = json!(args);
        }
        rules.push(rule);
    }
    let mut out = json!({"defaultAction": p.default_action, "architectures": arches, "syscalls": rules});
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !p.flags.is_empty() {
        out["flags"] = json!(p.flags);
    }
    serde_json::from_value(out).map_err(|e| bad(format!("not a valid OCI seccomp value: {e}")))
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;

    #[test]
    fn profiles_that_are_not_small_regular_files_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Nobody writes the FIFO: a blocking open would hang this test.
        assert!(read_profile(&fifo).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_profile(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_profile(tmp.path()).is_err());
        let big = tmp.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_PROFILE_BYTES + 1) as usize]).unwrap();
        assert!(read_profile(&big).unwrap_err().to_string().contains("limit"));
        let ok = tmp.path().join("ok.json");
        std::fs::write(&ok, b"{}").unwrap();
        assert_eq!(read_profile(&ok).unwrap(), "{}");
    }

    fn host() -> Host {
        Host { go_arch: "amd64", scmp_arch: "SCMP_ARCH_X86_64", kernel: (6, 1) }
    }

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls().clone().unwrap_or_default().iter().flat_map(|r| r.names().clone()).collect()
    }

    fn sc_with(t: i32, r: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile { profile_type: t, localhost_ref: r.into() }),
            ..Default::default()
        }
    }

    #[test]
    fn choose_reads_both_fields() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        assert_eq!(choose(&sc).unwrap(), Choice::Unconfined);
        for (p, want) in [
            ("runtime/default", Choice::RuntimeDefault),
            ("docker/default", Choice::RuntimeDefault),
            ("unconfined", Choice::Unconfined),
            ("localhost//x/p.json", Choice::Localhost { path: "/x/p.json".into(), field: "seccomp_profile_path" }),
        ] {
            sc.seccomp_profile_path = p.into();
            assert_eq!(choose(&sc).unwrap(), want, "{p}");
        }
        sc.seccomp_profile_path = "bogus".into();
        assert!(matches!(choose(&sc), Err(SeccompError::UnknownPath { .. })));
        sc.seccomp_profile_path = "localhost/rel.json".into();
        assert!(matches!(choose(&sc), Err(SeccompError::Localhost { .. })));
        assert_eq!(choose(&sc_with(0, "")).unwrap(), Choice::RuntimeDefault);
        assert_eq!(choose(&sc_with(1, "")).unwrap(), Choice::Unconfined);
        assert!(matches!(choose(&sc_with(2, "/p")).unwrap(), Choice::Localhost { .. }));
        assert!(matches!(choose(&sc_with(9, "")), Err(SeccompError::UnknownType { value: 9 })));
    }

    #[test]
    fn default_profile_converts_by_caps_and_arch() {
        let plain = convert(DEFAULT_PROFILE_JSON, "d", &[Capability::Chown], &host()).unwrap();
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        let n = names(&plain);
        for want in ["read", "mkdir", "arch_prctl", "ptrace", "clone3", "clone"] {
            assert!(n.iter().any(|x| x == want), "{want} missing");
        }
        for absent in ["mount", "unshare", "reboot", "riscv_flush_icache", "s390_runtime_instr", "chroot"] {
            assert!(!n.iter().any(|x| x == absent), "{absent} present");
        }
        let admin = convert(DEFAULT_PROFILE_JSON, "d", &[Capability::SysAdmin], &host()).unwrap();
        let n = names(&admin);
        assert!(n.iter().any(|x| x == "mount"));
        // clone3 ENOSYS and the masked clone rule are excluded with CAP_SYS_ADMIN.
        let v = serde_json::to_value(&admin).unwrap();
        assert!(!v["syscalls"].as_array().unwrap().iter().any(|r| r["errnoRet"] == 38));
        let old = Host { kernel: (4, 4), ..host() };
        let n = names(&convert(DEFAULT_PROFILE_JSON, "d", &[], &old).unwrap());
        assert!(!n.iter().any(|x| x == "ptrace"));
    }

    #[test]
    fn localhost_forms_and_errors() {
        let p = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":1},
                        {"names":["mkdirat"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
                        {"name":"x","action":"SCMP_ACT_KILL","includes":{"arches":["arm64"]}}],
            "flags":["SECCOMP_FILTER_FLAG_LOG"]}"#;
        let s = convert(p, "p", &[], &host()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["syscalls"].as_array().unwrap().len(), 2);
        assert_eq!(v["syscalls"][0]["errnoRet"], 1);
        assert_eq!(v["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");
        assert_eq!(v["flags"], json!(["SECCOMP_FILTER_FLAG_LOG"]));
        for bad in [
            "nope",
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ALLOW"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
        ] {
            assert!(matches!(convert(bad, "p", &[], &host()), Err(SeccompError::Invalid { .. })), "{bad}");
        }
        let err = container_seccomp(&sc_with(2, "/nonexistent/berth-profile.json"), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/berth-profile.json"), "{err}");
        let mut priv_sc = sc_with(2, "/nonexistent/p.json");
        priv_sc.privileged = true;
        assert!(container_seccomp(&priv_sc, &[]).unwrap().is_none());
        assert_eq!(parse_kernel("6.18.0-1-amd64"), Some((6, 18)));
    }
}
