//! Unit tests of `mounts.rs`: CRI mount options (recursive read-only and its refusals), the
//! mountinfo parser and the host-side propagation check. Pure except for temp dirs.

use super::*;
use crate::cri::v1 as cri;
use std::path::Path;

const PRIVATE: i32 = cri::MountPropagation::PropagationPrivate as i32;
const H2C: i32 = cri::MountPropagation::PropagationHostToContainer as i32;
const BIDI: i32 = cri::MountPropagation::PropagationBidirectional as i32;

fn rro_features() -> RuntimeFeatures {
    RuntimeFeatures { mount_options: vec!["rro".into(), "rbind".into()], ..Default::default() }
}

fn rro_mount(host: &Path, readonly: bool, propagation: i32) -> cri::Mount {
    cri::Mount {
        container_path: "/data".into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only: true,
        propagation,
        ..Default::default()
    }
}

fn opts(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

#[test]
fn recursive_read_only_emits_rro() {
    let d = tempfile::tempdir().unwrap();
    let m = cri_mount("c1", &rro_mount(d.path(), true, PRIVATE), &rro_features()).unwrap();
    assert_eq!(opts(&m), ["rbind", "rprivate", "ro", "rro"]);
    assert_eq!(m.source().as_deref(), Some(d.path().canonicalize().unwrap().as_path()));
    // Without recursive_read_only: plain `ro`, no `rro`.
    let mut plain = rro_mount(d.path(), true, PRIVATE);
    plain.recursive_read_only = false;
    assert_eq!(opts(&cri_mount("c1", &plain, &rro_features()).unwrap()), ["rbind", "rprivate", "ro"]);
}

#[test]
fn recursive_read_only_refusals() {
    let d = tempfile::tempdir().unwrap();
    let e = cri_mount("c1", &rro_mount(d.path(), false, PRIVATE), &rro_features()).unwrap_err();
    assert!(matches!(e, SpecError::InvalidMount { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("recursive_read_only") && msg.contains("readonly"), "{msg}");

    for p in [H2C, BIDI] {
        let e = cri_mount("c1", &rro_mount(d.path(), true, p), &rro_features()).unwrap_err();
        assert!(matches!(e, SpecError::InvalidMount { .. }), "{e}");
        assert!(e.to_string().contains("PROPAGATION_PRIVATE"), "{e}");
    }

    let e = cri_mount("c1", &rro_mount(d.path(), true, PRIVATE), &RuntimeFeatures::default()).unwrap_err();
    assert!(matches!(e, SpecError::RuntimeLacks { field: "mounts[].recursive_read_only", .. }), "{e}");
}

#[test]
fn dangling_symlink_is_refused_naming_the_path() {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("dangling");
    std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
    let m = cri::Mount { container_path: "/x".into(), host_path: link.display().to_string(), ..Default::default() };
    let e = cri_mount("c1", &m, &RuntimeFeatures::default()).unwrap_err();
    assert!(matches!(e, SpecError::MountSource { .. }), "{e}");
    assert!(e.to_string().contains(&link.display().to_string()), "{e}");
    // The dangling target was not created.
    assert!(!d.path().join("nowhere").exists());
}

#[test]
fn symlinks_resolve_to_their_target() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("t");
    std::fs::create_dir(&target).unwrap();
    let link = d.path().join("l");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let m = cri::Mount { container_path: "/x".into(), host_path: link.display().to_string(), ..Default::default() };
    let got = cri_mount("c1", &m, &RuntimeFeatures::default()).unwrap();
    assert_eq!(got.source().as_deref(), Some(target.canonicalize().unwrap().as_path()));
}

#[test]
fn propagation_host_side_check() {
    use cri::MountPropagation::*;
    let info = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
40 27 0:40 / /shared rw shared:7 - tmpfs tmpfs rw
41 27 0:41 / /slave rw master:7 - tmpfs tmpfs rw
";
    let ok = |p: &str, prop| check_source_propagation(Path::new(p), prop, info);
    assert!(ok("/shared/d", PropagationBidirectional).is_ok());
    assert!(ok("/shared/d", PropagationHostToContainer).is_ok());
    assert!(ok("/slave/d", PropagationHostToContainer).is_ok());
    assert!(ok("/var/d", PropagationPrivate).is_ok());
    let e = ok("/slave/d", PropagationBidirectional).unwrap_err();
    assert!(e.contains("/slave/d") && e.contains("mount --make-rshared /slave"), "{e}");
    let e = ok("/var/d", PropagationHostToContainer).unwrap_err();
    assert!(e.contains("shared or slave") && e.contains("mount point / "), "{e}");
    assert!(check_source_propagation(Path::new("/x"), PropagationBidirectional, "").is_err());
}

#[test]
fn private_source_refused_for_bidirectional() {
    // A temp dir under a private mount (the root here is private; skip when it is shared).
    let d = tempfile::tempdir().unwrap();
    let src = d.path().canonicalize().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = crate::mountinfo::parse(&info);
    if crate::mountinfo::mount_of(&mounts, &src).is_some_and(|m| m.shared) {
        eprintln!("skipped: {} is on a shared mount", src.display());
        return;
    }
    let m = cri::Mount { container_path: "/x".into(), host_path: src.display().to_string(), propagation: BIDI, ..Default::default() };
    let e = cri_mount("c1", &m, &RuntimeFeatures::default()).unwrap_err();
    assert!(matches!(e, SpecError::InvalidMount { .. }), "{e}");
    assert!(e.to_string().contains("--make-rshared"), "{e}");
}

#[test]
fn relative_host_path_is_refused_before_anything_is_created() {
    let m = cri::Mount { container_path: "/v".into(), host_path: "berth-relative-test/dir".into(), ..Default::default() };
    let e = cri_mount("c1", &m, &RuntimeFeatures::default()).unwrap_err();
    assert!(matches!(e, SpecError::InvalidMount { .. }) && e.to_string().contains("must be absolute"), "{e}");
    assert!(!Path::new("berth-relative-test").exists());
}

#[test]
fn refused_propagation_creates_no_host_directory() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().canonicalize().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if crate::mountinfo::mount_of(&crate::mountinfo::parse(&info), &src).is_some_and(|m| m.shared || m.slave) {
        eprintln!("skipped: {} is on a shared or slave mount", src.display());
        return;
    }
    let missing = src.join("a/b");
    let m = cri::Mount { container_path: "/x".into(), host_path: missing.display().to_string(), propagation: BIDI, ..Default::default() };
    assert!(cri_mount("c1", &m, &RuntimeFeatures::default()).is_err());
    assert!(!src.join("a").exists(), "the refused mount created its host path");
}
