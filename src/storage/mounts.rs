//! overlayfs and tmpfs mounts, idempotent unmount, mount table lookups.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

use super::StorageError;

/// The largest mount data the kernel accepts: one page including the trailing NUL.
pub const MAX_MOUNT_DATA: usize = 4095;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { what, path, source }
}

fn sys_err(op: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> StorageError {
    let target = target.to_path_buf();
    move |source| StorageError::Syscall { op, target, source }
}

/// The overlay mount data for `lowers` given base layer FIRST (as layers are stacked in an image
/// manifest): `lowerdir=<top>:...:<base>,upperdir=<upper>,workdir=<work>` (overlayfs lists the
/// top layer first), plus `index=off` when the kernel has the overlay index feature, as
/// containerd does, so an upper can be reused with a re-created lower. Errors: no lower layer, a
/// path holding `:`, `,` or `\` (they would need escaping), or data longer than
/// [`MAX_MOUNT_DATA`] (an image with very many layers; shortening the paths with symlinks is
/// not implemented yet).
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<String, StorageError> {
    let invalid = |reason: String| StorageError::Invalid {
        target: target.to_path_buf(),
        reason,
    };
    if lowers.is_empty() {
        return Err(invalid("overlay needs at least one lower layer".into()));
    }
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) {
            return Err(invalid(format!(
                "path {s:?} contains ':', ',' or '\\', which overlay options cannot hold"
            )));
        }
    }
    let lowerdir: Vec<String> = lowers.iter().rev().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.to_string_lossy(),
        work.to_string_lossy()
    );
    if Path::new("/sys/module/overlay/parameters/index").exists() {
        data.push_str(",index=off");
    }
    if data.len() > MAX_MOUNT_DATA {
        return Err(invalid(format!(
            "overlay mount data is {} bytes for {} layers, more than one page ({MAX_MOUNT_DATA})",
            data.len(),
            lowers.len()
        )));
    }
    Ok(data)
}

/// Mounts an overlay at `target` with `lowers` (base layer FIRST) read-only under the writable
/// `upper` (`work` is overlayfs' scratch dir on the same filesystem as `upper`). `upper`, `work`
/// and `target` are created when missing; every lower must exist. Errors name the target.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), StorageError> {
    let data = overlay_options(lowers, upper, work, target)?;
    for l in lowers {
        if !l.is_dir() {
            return Err(StorageError::Invalid {
                target: target.to_path_buf(),
                reason: format!("lower layer {} is not a directory", l.display()),
            });
        }
    }
    for (what, d) in [
        ("create upper dir", upper),
        ("create work dir", work),
        ("create mount point", target),
    ] {
        std::fs::create_dir_all(d).map_err(io_err(what, d))?;
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(sys_err("mount overlay on", target))
}

/// The mount data of a read-only overlay of `lowers` (base layer FIRST) without an upper layer:
/// `lowerdir=<top>:...:<base>`. Errors as [`overlay_options`]; overlayfs needs two lowers or
/// more without an upper, so a single layer is an error here (see [`mount_layers_readonly`]).
pub fn readonly_overlay_options(lowers: &[PathBuf], target: &Path) -> Result<String, StorageError> {
    let invalid = |reason: String| StorageError::Invalid { target: target.to_path_buf(), reason };
    if lowers.len() < 2 {
        return Err(invalid(format!("a read-only overlay needs two lower layers or more, got {}", lowers.len())));
    }
    for p in lowers {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) {
            return Err(invalid(format!("path {s:?} contains ':', ',' or '\\', which overlay options cannot hold")));
        }
    }
    let lowerdir: Vec<String> = lowers.iter().rev().map(|p| p.to_string_lossy().into_owned()).collect();
    let data = format!("lowerdir={}", lowerdir.join(":"));
    if data.len() > MAX_MOUNT_DATA {
        return Err(invalid(format!("overlay mount data is {} bytes for {} layers, more than one page ({MAX_MOUNT_DATA})", data.len(), lowers.len())));
    }
    Ok(data)
}

/// Mounts the image layers `lowers` (base FIRST) read-only at `target` (created when missing):
/// a read-only overlay of them, or a read-only bind mount of the only one. What an image volume
/// (CRI `Mount.image`, KEP-4639) shows. Errors name the target; nothing stays mounted after one.
pub fn mount_layers_readonly(lowers: &[PathBuf], target: &Path) -> Result<(), StorageError> {
    for l in lowers {
        if !l.is_dir() {
            return Err(StorageError::Invalid { target: target.to_path_buf(), reason: format!("layer {} is not a directory", l.display()) });
        }
    }
    std::fs::create_dir_all(target).map_err(io_err("create mount point", target))?;
    match lowers {
        [] => Err(StorageError::Invalid { target: target.to_path_buf(), reason: "an image without layers has nothing to mount".into() }),
        [only] => {
            mount(Some(only.as_path()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys_err("bind mount on", target))?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
                let _ = unmount(target);
                return Err(sys_err("remount read-only", target)(e));
            }
            Ok(())
        }
        _ => {
            let data = readonly_overlay_options(lowers, target)?;
            mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_RDONLY, Some(data.as_str())).map_err(sys_err("mount overlay on", target))
        }
    }
}

/// Mounts a tmpfs at `target` (created when missing). `options` is a mount(8)-style list: flag
/// words (`ro`, `nosuid`, `nodev`, `noexec`, `suid`, `dev`, `exec`, `relatime`, `strictatime`,
/// `noatime`) become mount flags, the rest (`mode=1777`, `size=65536k`) is tmpfs data. Unless
/// `suid`, `dev` or `exec` say otherwise the mount is `nosuid,nodev,noexec`, like CRI-O's pod
/// `/dev/shm`.
pub fn mount_tmpfs(target: &Path, options: &str) -> Result<(), StorageError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut data: Vec<&str> = Vec::new();
    for o in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    if data.len() > MAX_MOUNT_DATA {
        return Err(StorageError::Invalid {
            target: target.to_path_buf(),
            reason: "tmpfs options exceed one page".into(),
        });
    }
    std::fs::create_dir_all(target).map_err(io_err("create mount point", target))?;
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data.as_str())).map_err(sys_err("mount tmpfs on", target))
}

/// Unmounts `target`, and any mounts stacked on it. Idempotent: a missing path or one that is
/// not a mount point is `Ok`. A busy mount (EBUSY) is detached lazily (`MNT_DETACH`).
pub fn unmount(target: &Path) -> Result<(), StorageError> {
    for _ in 0..16 {
        if !is_mounted(target) {
            return Ok(());
        }
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::Error::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH).map_err(sys_err("unmount (detach)", target))?
            }
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(sys_err("unmount", target)(e)),
        }
    }
    Err(StorageError::Invalid {
        target: target.to_path_buf(),
        reason: "still mounted after 16 unmounts".into(),
    })
}

/// Whether `target` is a mount point, by `/proc/self/mountinfo` (field 5, octal escapes
/// decoded). The path is canonicalized first when it exists, so symlinks and `..` do not hide a
/// mount. False when the mount table cannot be read.
pub fn is_mounted(target: &Path) -> bool {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = target.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
