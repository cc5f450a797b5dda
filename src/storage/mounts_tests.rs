//! Mount tests. Those marked "root" mount real filesystems in temp dirs and unmount them.

use super::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn lowers_top_first_and_paths_overlay_can_hold() {
    let lowers = vec![PathBuf::from("/l/base"), PathBuf::from("/l/mid"), PathBuf::from("/l/top")];
    assert_eq!(lowerdir_top_first(&lowers), "/l/top:/l/mid:/l/base");
    assert!(check_option_paths([Path::new("/l/a")].into_iter(), Path::new("/t")).is_ok());
    for bad in ["/l/a:b", "/l/a,b", "/l/a\\b"] {
        let err = check_option_paths([Path::new(bad)].into_iter(), Path::new("/t")).unwrap_err();
        assert!(err.to_string().contains("/t"), "{err}");
    }
}

/// An image of 150 layers (mount data of ~6 KiB at real path lengths) and one of none both
/// mount; every layer's file is visible, the top layer wins, and the lower links are gone.
#[test]
fn many_layers_and_no_layers_mount_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let long = d.path().join("layers-with-a-long-directory-name-like-a-real-root");
    let lowers: Vec<PathBuf> = (0..150)
        .map(|i| {
            let l = long.join(format!("{i:064}")).join("diff");
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), b"x").unwrap();
            std::fs::write(l.join("which"), format!("{i}")).unwrap();
            l
        })
        .collect();
    assert!(lowerdir_top_first(&lowers).len() > MAX_MOUNT_DATA, "the test must need short names");
    let c = d.path().join("c");
    let merged = c.join("rootfs");
    mount_overlay(&lowers, &c.join("upper"), &c.join("work"), &merged).unwrap();
    let seen = (0..150).filter(|i| merged.join(format!("f{i}")).exists()).count();
    let which = std::fs::read_to_string(merged.join("which"));
    let links_left = c.join("lower-links").exists();
    unmount(&merged).unwrap();
    assert_eq!(seen, 150);
    assert_eq!(which.unwrap(), "149", "the last layer is the top");
    assert!(!links_left, "the lower links are removed once mounted");

    let ro = d.path().join("vol");
    mount_layers_readonly(&lowers, &ro).unwrap();
    let seen_ro = merged_count(&ro);
    let write = std::fs::write(ro.join("new"), b"x");
    unmount(&ro).unwrap();
    assert_eq!(seen_ro, 150);
    assert!(write.is_err(), "a read-only overlay");

    let e = d.path().join("e");
    mount_overlay(&[], &e.join("upper"), &e.join("work"), &e.join("rootfs")).unwrap();
    std::fs::write(e.join("rootfs/written"), b"x").unwrap();
    let in_upper = e.join("upper/written").exists();
    unmount(&e.join("rootfs")).unwrap();
    assert!(in_upper, "an image without layers still gets a writable root");
}

fn merged_count(dir: &Path) -> usize {
    (0..150).filter(|i| dir.join(format!("f{i}")).exists()).count()
}

#[allow(unsafe_code)]
fn set_opaque(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and live across the call; the value is 1 byte.
    let rc = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "setxattr {}: {}", dir.display(), std::io::Error::last_os_error());
}

#[test]
fn overlay_merges_whiteouts_and_opaque_dirs_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    let top = d.path().join("top");
    for p in ["etc", "gone", "opaque"] {
        std::fs::create_dir_all(base.join(p)).unwrap();
    }
    std::fs::write(base.join("etc/keep"), "base").unwrap();
    std::fs::write(base.join("etc/deleted"), "base").unwrap();
    std::fs::write(base.join("gone/x"), "x").unwrap();
    std::fs::write(base.join("opaque/hidden"), "h").unwrap();
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::create_dir_all(top.join("opaque")).unwrap();
    std::fs::write(top.join("etc/keep"), "top").unwrap();
    std::fs::write(top.join("opaque/visible"), "v").unwrap();
    set_opaque(&top.join("opaque"));
    for w in ["etc/deleted", "gone"] {
        nix::sys::stat::mknod(
            &top.join(w),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o000),
            nix::sys::stat::makedev(0, 0),
        )
        .unwrap();
    }
    let upper = d.path().join("upper");
    let work = d.path().join("work");
    let merged = d.path().join("merged");
    mount_overlay(&[base.clone(), top.clone()], &upper, &work, &merged).unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(is_mounted(&merged));
        assert_eq!(std::fs::read_to_string(merged.join("etc/keep")).unwrap(), "top");
        assert!(!merged.join("etc/deleted").exists());
        assert!(!merged.join("gone").exists());
        assert!(merged.join("opaque/visible").exists());
        assert!(!merged.join("opaque/hidden").exists());
        std::fs::write(merged.join("new"), "written").unwrap();
        std::fs::remove_file(merged.join("etc/keep")).unwrap();
    });
    unmount(&merged).unwrap();
    result.unwrap();
    assert!(!is_mounted(&merged));
    assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "written");
    let meta = std::fs::symlink_metadata(upper.join("etc/keep")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(meta.file_type().is_char_device() && meta.rdev() == 0, "deletion recorded as a whiteout");
    assert_eq!(std::fs::read_to_string(top.join("etc/keep")).unwrap(), "top", "lower untouched");
    unmount(&merged).unwrap();
}

#[test]
fn overlay_with_single_layer_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("f"), "1").unwrap();
    let merged = d.path().join("m");
    mount_overlay(&[base], &d.path().join("u"), &d.path().join("w"), &merged).unwrap();
    let ok = std::fs::read_to_string(merged.join("f")).map(|s| s == "1");
    unmount(&merged).unwrap();
    assert!(ok.unwrap());
    let missing = mount_overlay(&[d.path().join("nope")], &d.path().join("u"), &d.path().join("w"), &merged);
    assert!(missing.is_err());
}

#[test]
fn tmpfs_mount_and_idempotent_unmount_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let shm = d.path().join("shm");
    mount_tmpfs(&shm, "mode=1777,size=65536k").unwrap();
    let mounted = is_mounted(&shm);
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(shm.to_str().unwrap()))
        .map(String::from);
    let mode = std::fs::metadata(&shm).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    unmount(&shm).unwrap();
    assert!(mounted);
    let line = line.unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev") && line.contains("noexec"), "{line}");
    assert!(line.contains("size=65536k"), "{line}");
    assert_eq!(mode.unwrap(), 0o1777);
    assert!(!is_mounted(&shm));
    unmount(&shm).unwrap();
    unmount(&d.path().join("never-existed")).unwrap();
    unmount(d.path()).unwrap();
}

#[test]
fn busy_mount_is_detached_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("t");
    mount_tmpfs(&t, "size=1m").unwrap();
    let f = std::fs::File::create(t.join("open"));
    unmount(&t).unwrap();
    assert!(!is_mounted(&t));
    drop(f);
}

#[test]
fn mount_source_is_the_longest_ancestor() {
    let mi = "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
              30 22 0:26 / /var/lib rw - xfs /dev/vdb rw\n\
              31 22 0:27 / /var/lib/with\\040space rw - tmpfs tmpfs rw\n";
    assert_eq!(mount_source(mi, Path::new("/var/lib/berth/containers")).as_deref(), Some("/dev/vdb"));
    assert_eq!(mount_source(mi, Path::new("/var/libx")).as_deref(), Some("/dev/vda1"), "components, not string prefixes");
    assert_eq!(mount_source(mi, Path::new("/var/lib/with space/x")).as_deref(), Some("tmpfs"));
    assert!(mount_source_of(Path::new("/")).is_some(), "this machine's root has a mount source");
}
