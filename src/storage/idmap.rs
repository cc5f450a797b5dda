//! Idmapped mounts, made on the host side for pods with their own user namespace.
//!
//! An idmapped mount shows the files of a filesystem through a user namespace's id mapping
//! without changing them on disk (Linux 5.12+, `mount_setattr(2)` with `MOUNT_ATTR_IDMAP`): with a
//! pod mapping container id 0 to host id N, a file owned by host uid 0 on disk appears, through
//! the mount, as owned by host uid N, which is root inside the pod; what the pod's root writes
//! lands on disk as uid 0. So layers and volumes are shared with the host unchanged, with no
//! chown-copy (what Kubernetes' user namespaces, KEP-127, ask of the runtime).
//!
//! runc 1.1 ignores a mount's `uidMappings`, so berth does it itself, as the kernel's new mount
//! API allows: `open_tree(OPEN_TREE_CLONE)` makes a detached copy of the source mount,
//! `mount_setattr(MOUNT_ATTR_IDMAP, userns_fd)` gives that copy the mapping, and `move_mount`
//! attaches it at a host path that is then handed to the runtime (a bind of an idmapped mount
//! keeps the mapping) or used as an overlay lower layer (overlayfs accepts idmapped layers and
//! takes its own private clone of each layer, so the attached copies can be detached as soon as
//! the overlay is mounted).
//!
//! This module is the one in `storage/` that makes raw syscalls; each `unsafe` block says why it
//! is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::StorageError;

/// `OPEN_TREE_CLONE` (linux/mount.h): clone the mount instead of opening it.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
/// `MOUNT_ATTR_IDMAP` (linux/mount.h): idmap the mount to `mount_attr.userns_fd`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `MOVE_MOUNT_F_EMPTY_PATH` (linux/mount.h): the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` (linux/mount.h, `MOUNT_ATTR_SIZE_VER0` = 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString, StorageError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| StorageError::Invalid { target: p.to_path_buf(), reason: "path holds a NUL byte".into() })
}

fn sys_err(op: &'static str, target: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let target = target.to_path_buf();
    move |e| StorageError::Syscall { op, target, source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) }
}

/// A detached clone of the mount at `src`, with its submounts when `recursive` (as `rbind`),
/// idmapped through the user namespace `userns` (an open `/proc/<pid>/ns/user`).
///
/// Errors: `open_tree` (ENOENT: no `src`; ENOSYS: kernel older than 5.2) or `mount_setattr`
/// (EINVAL: the filesystem, or with `recursive` one of the submounts' filesystems, does not
/// support idmapped mounts, or a mount is already idmapped; ENOSYS: kernel older than 5.12),
/// naming `src`.
pub fn idmapped_clone(src: &Path, userns: &File, recursive: bool) -> Result<OwnedFd, StorageError> {
    let c = cpath(src)?;
    let rec = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; open_tree takes no
    // other pointers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(sys_err("open_tree(OPEN_TREE_CLONE)", src)(std::io::Error::last_os_error()));
    }
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    let empty = c"";
    // SAFETY: `tree` is an open mount fd, `empty` a valid empty C string, and `attr` a properly
    // laid out `struct mount_attr` whose size is passed; all outlive the call, which only reads
    // them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(sys_err("mount_setattr(MOUNT_ATTR_IDMAP)", src)(std::io::Error::last_os_error()));
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` at `target`, which must exist (a directory for a
/// directory mount, a file for a file mount). Errors: `move_mount` naming `target`.
pub fn attach(tree: OwnedFd, target: &Path) -> Result<(), StorageError> {
    let c = cpath(target)?;
    let empty = c"";
    // SAFETY: `tree` is an open detached-mount fd and both strings are valid NUL-terminated C
    // strings that outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, c.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    };
    if rc < 0 {
        return Err(sys_err("move_mount", target)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes a recursive idmapped bind mount of `src` (and its submounts, as `rbind`) at `target`
/// through the user namespace file `userns` (e.g. `/proc/<infra pid>/ns/user`). `target` is
/// created when missing: a directory when `src` is one, else an empty file. Errors: opening
/// `userns`, creating `target`, or the syscalls of [`idmapped_clone`] and [`attach`]; on error
/// nothing stays mounted (`target` may remain).
pub fn idmapped_bind(src: &Path, target: &Path, userns: &Path) -> Result<(), StorageError> {
    let ns =
        File::open(userns).map_err(|source| StorageError::Io { what: "opening user namespace", path: userns.to_path_buf(), source })?;
    let tree = idmapped_clone(src, &ns, true)?;
    let is_dir =
        std::fs::metadata(src).map_err(|source| StorageError::Io { what: "inspecting", path: src.to_path_buf(), source })?.is_dir();
    let created = if is_dir {
        std::fs::create_dir_all(target)
    } else {
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(target).map(|_| ())
    };
    created.map_err(|source| StorageError::Io { what: "creating mount point", path: target.to_path_buf(), source })?;
    attach(tree, target)
}

/// Mounts an overlay at `target` whose lower layers (`lowers`, base layer FIRST, as
/// [`super::mount_overlay`] takes them) are idmapped through the user namespace file `userns`:
/// each layer is attached, idmapped, under `scratch/l<i>`, the overlay is stacked on those, and
/// the scratch mounts are detached again (overlayfs keeps its own private clone of each layer).
/// `upper` and `work` stay as they are: files the pod's root creates land in `upper` owned by
/// its host ids, so the caller gives `upper` itself to the pod's root. Errors: those of
/// [`idmapped_clone`], [`attach`] and [`super::mount_overlay`]; nothing stays mounted under
/// `scratch` either way.
pub fn mount_overlay_idmapped(
    lowers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    scratch: &Path,
    userns: &Path,
) -> Result<(), StorageError> {
    let ns =
        File::open(userns).map_err(|source| StorageError::Io { what: "opening user namespace", path: userns.to_path_buf(), source })?;
    let result = (|| {
        let mut mapped = Vec::with_capacity(lowers.len());
        for (i, lower) in lowers.iter().enumerate() {
            let at = scratch.join(format!("l{i}"));
            std::fs::create_dir_all(&at).map_err(|source| StorageError::Io { what: "creating mount point", path: at.clone(), source })?;
            attach(idmapped_clone(lower, &ns, false)?, &at)?;
            mapped.push(at);
        }
        super::mount_overlay(&mapped, upper, work, target)
    })();
    let detached = detach_under(scratch);
    result.and(detached)
}

/// Detaches (`umount2(MNT_DETACH)`) every mount at or below `dir`, deepest first, as listed in
/// `/proc/self/mountinfo`, repeating until none is left (mounts stacked on one path come off
/// one per round): the scratch mounts of a container must never be under its state directory
/// when that is removed (removing a directory tree would follow an idmapped volume into the
/// host's files). A missing `dir` is Ok. Fails closed: an unreadable mount table, an `umount2`
/// error other than EINVAL/ENOENT (already gone), or mounts still there after
/// [`DETACH_ROUNDS`] rounds are errors, and the caller must then keep the directory.
pub fn detach_under(dir: &Path) -> Result<(), StorageError> {
    let base = match std::fs::canonicalize(dir) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StorageError::Io { what: "resolving", path: dir.to_path_buf(), source }),
    };
    for _ in 0..DETACH_ROUNDS {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| StorageError::Io {
            what: "reading the mount table for",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut points = crate::mountinfo::points_under(&text, &base);
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(source) => return Err(StorageError::Syscall { op: "umount2(MNT_DETACH)", target: p, source }),
            }
        }
    }
    Err(StorageError::Invalid { target: dir.to_path_buf(), reason: format!("mounts remain after {DETACH_ROUNDS} rounds of detaching") })
}

/// How many rounds [`detach_under`] tries.
pub const DETACH_ROUNDS: usize = 16;

/// Whether this kernel can make idmapped mounts: `mount_setattr` exists (Linux 5.12+). Probed
/// with an all-zero `mount_attr` on fd -1, which changes nothing: a kernel with the syscall
/// returns 0 (a no-op request) or EBADF, one without it ENOSYS.
pub fn kernel_supports_idmap() -> bool {
    let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let empty = c"";
    // SAFETY: fd -1 names no mount and the attribute set is empty, so nothing can change; the
    // pointers are valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    !(rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::{Child, Command, Stdio};

    /// A process in a new user namespace mapping 0..65536 to host 200000..265536 (the maps are
    /// written from here, as root in the parent namespace may).
    fn userns_holder() -> Option<Child> {
        let child = Command::new("unshare").args(["--user", "sleep", "30"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
        let pid = child.id();
        for _ in 0..100 {
            // unshare(1) has switched namespace once /proc/<pid>/ns/user differs from ours.
            if std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != std::fs::read_link("/proc/self/ns/user").ok() {
                std::fs::write(format!("/proc/{pid}/uid_map"), "0 200000 65536\n").ok()?;
                std::fs::write(format!("/proc/{pid}/gid_map"), "0 200000 65536\n").ok()?;
                return Some(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn kernel_probe_says_yes_here() {
        // The machines berth targets run 5.12+; this one runs 6.x.
        assert!(kernel_supports_idmap());
    }

    #[test]
    fn idmapped_bind_shows_root_files_as_the_mapped_id_and_writes_back_unmapped() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(mut holder) = userns_holder() else {
            eprintln!("skipped: no unshare(1)");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        std::os::unix::fs::chown(src.join("f"), Some(0), Some(0)).unwrap();
        let ns = format!("/proc/{}/ns/user", holder.id());
        let r = idmapped_bind(&src, &dst, Path::new(&ns));
        let _ = holder.kill();
        let _ = holder.wait();
        r.unwrap();
        let seen = std::fs::metadata(dst.join("f"));
        // A write as host uid 200007 (the pod's uid 7) lands on disk as uid 7. Host root itself
        // may not write: uid 0 is outside the mapping (EOVERFLOW).
        let g = dst.join("g");
        let wrote = std::thread::spawn(move || {
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(200_007));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(200_007));
            std::fs::write(&g, b"y")
        })
        .join()
        .unwrap();
        let root_write = std::fs::write(dst.join("h"), b"z");
        nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let seen = seen.unwrap();
        wrote.unwrap();
        let written = std::fs::metadata(src.join("g")).unwrap();
        assert_eq!(root_write.unwrap_err().raw_os_error(), Some(libc::EOVERFLOW));
        assert_eq!((seen.uid(), seen.gid()), (200_000, 200_000));
        assert_eq!((written.uid(), written.gid()), (7, 7));
        // The source itself is untouched.
        assert_eq!(std::fs::metadata(src.join("f")).unwrap().uid(), 0);
    }

    #[test]
    fn idmapped_bind_of_a_missing_source_names_it() {
        let err = idmapped_bind(Path::new("/nonexistent/berth-src"), Path::new("/tmp/x"), Path::new("/proc/self/ns/user"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/berth-src"), "{err}");
    }
}
