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

/// Mounts an overlay at `target` with `lowers` (base layer FIRST) read-only under the writable
/// `upper` (`work` is overlayfs' scratch dir on the same filesystem as `upper`). `upper`, `work`
/// and `target` are created when missing; every lower must exist.
///
/// An image without layers (scratch plus config) gets one empty lower, `<upper>/../lower-empty`
/// (overlayfs needs a lower). Mount data over one page (an image of ~40 layers or more at
/// berth's path lengths) is mounted with short relative lower names ([`mount_short_lowers`]),
/// as containerd and CRI-O do. Errors name the target.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), StorageError> {
    let empty_lower;
    let lowers = if lowers.is_empty() {
        empty_lower = vec![upper.with_file_name("lower-empty")];
        std::fs::create_dir_all(&empty_lower[0]).map_err(io_err("create empty lower dir", &empty_lower[0]))?;
        &empty_lower[..]
    } else {
        lowers
    };
    check_option_paths(lowers.iter().map(PathBuf::as_path).chain([upper, work]), target)?;
    for l in lowers {
        if !l.is_dir() {
            return Err(StorageError::Invalid {
                target: target.to_path_buf(),
                reason: format!("lower layer {} is not a directory", l.display()),
            });
        }
    }
    for (what, d) in [("create upper dir", upper), ("create work dir", work), ("create mount point", target)] {
        std::fs::create_dir_all(d).map_err(io_err(what, d))?;
    }
    let data = |lowerdir: &str| {
        let mut data = format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.to_string_lossy(), work.to_string_lossy());
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            data.push_str(",index=off");
        }
        data
    };
    let full = data(&lowerdir_top_first(lowers));
    if full.len() > MAX_MOUNT_DATA {
        return mount_short_lowers(lowers, data, false, target, &upper.with_file_name("lower-links"));
    }
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(full.as_str())).map_err(sys_err("mount overlay on", target))
}

/// `<top>:...:<base>` of `lowers` given base FIRST.
fn lowerdir_top_first(lowers: &[PathBuf]) -> String {
    lowers.iter().rev().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":")
}

/// Refuses paths overlay options cannot hold (`:`, `,`, `\` would need escaping).
fn check_option_paths<'a>(paths: impl Iterator<Item = &'a Path>, target: &Path) -> Result<(), StorageError> {
    for p in paths {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) {
            return Err(StorageError::Invalid {
                target: target.to_path_buf(),
                reason: format!("path {s:?} contains ':', ',' or '\\', which overlay options cannot hold"),
            });
        }
    }
    Ok(())
}

/// Mounts an overlay whose lower list is too long for one page of mount data: `links` (made
/// afresh) gets one symlink per lower named by its position (`0` is the top layer), and
/// mount(8) runs with `links` as its working directory so that `lowerdir=0:1:...` resolves
/// there (overlayfs resolves the lower paths once, at mount time; the links go afterwards). A
/// separate process, because the daemon's threads share one working directory. `data` makes the
/// whole mount data from a lowerdir value; `readonly` adds `-r`.
///
/// Errors: data still over one page (over ~800 layers), the links, mount(8) failing (its
/// message is in the error).
pub fn mount_short_lowers(
    lowers: &[PathBuf],
    data: impl Fn(&str) -> String,
    readonly: bool,
    target: &Path,
    links: &Path,
) -> Result<(), StorageError> {
    let names: Vec<String> = (0..lowers.len()).map(|i| i.to_string()).collect();
    let short = data(&names.join(":"));
    if short.len() > MAX_MOUNT_DATA {
        return Err(StorageError::Invalid {
            target: target.to_path_buf(),
            reason: format!(
                "overlay mount data is {} bytes for {} layers even with short lower names, more than one page ({MAX_MOUNT_DATA})",
                short.len(),
                lowers.len()
            ),
        });
    }
    let _ = std::fs::remove_dir_all(links);
    std::fs::create_dir_all(links).map_err(io_err("create lower links dir", links))?;
    let result = (|| {
        for (name, lower) in names.iter().zip(lowers.iter().rev()) {
            let link = links.join(name);
            std::os::unix::fs::symlink(lower, &link).map_err(io_err("link lower layer", &link))?;
        }
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-t", "overlay", "overlay", "-o", &short]);
        if readonly {
            cmd.arg("-r");
        }
        let out =
            cmd.arg(target).current_dir(links).stdin(std::process::Stdio::null()).output().map_err(io_err("run mount(8) for", target))?;
        if !out.status.success() {
            return Err(StorageError::Invalid {
                target: target.to_path_buf(),
                reason: format!(
                    "mount(8) of an overlay of {} layers: {}: {}",
                    lowers.len(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(links);
    result
}

/// Mounts the image layers `lowers` (base FIRST) read-only at `target` (created when missing):
/// a read-only overlay of them, or a read-only bind mount of the only one. What an image volume
/// (CRI `Mount.image`, KEP-4639) shows. Errors name the target; nothing stays mounted after one.
pub fn mount_layers_readonly(lowers: &[PathBuf], target: &Path) -> Result<(), StorageError> {
    for l in lowers {
        if !l.is_dir() {
            return Err(StorageError::Invalid {
                target: target.to_path_buf(),
                reason: format!("layer {} is not a directory", l.display()),
            });
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
            check_option_paths(lowers.iter().map(PathBuf::as_path), target)?;
            let data = format!("lowerdir={}", lowerdir_top_first(lowers));
            if data.len() > MAX_MOUNT_DATA {
                let links = target.with_file_name(format!(
                    "{}.lower-links",
                    target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                ));
                return mount_short_lowers(lowers, |l| format!("lowerdir={l}"), true, target, &links);
            }
            mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_RDONLY, Some(data.as_str()))
                .map_err(sys_err("mount overlay on", target))
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
        return Err(StorageError::Invalid { target: target.to_path_buf(), reason: "tmpfs options exceed one page".into() });
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
            Err(nix::Error::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(sys_err("unmount (detach)", target))?,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(sys_err("unmount", target)(e)),
        }
    }
    Err(StorageError::Invalid { target: target.to_path_buf(), reason: "still mounted after 16 unmounts".into() })
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
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| crate::mountinfo::unescape(mp) == want)
}

/// The source (the field after the file system type, e.g. `/dev/vda1`) of the mount that holds
/// `path`: the mount in `/proc/self/mountinfo` whose mount point is the longest ancestor of the
/// canonicalized path. `None` when the table cannot be read or nothing matches.
pub fn mount_source_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_source(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, &path)
}

/// [`mount_source_of`] over the text of a mountinfo (proc(5)); of mounts on the same point the
/// last one (on top) wins.
fn mount_source(mountinfo: &str, p: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let (Some(mount_point), Some(source)) = (left.split(' ').nth(4), right.split(' ').nth(1)) else { continue };
        let mount_point = crate::mountinfo::unescape(mount_point);
        if p.starts_with(&mount_point) && best.as_ref().is_none_or(|(len, _)| mount_point.len() >= *len) {
            best = Some((mount_point.len(), crate::mountinfo::unescape(source)));
        }
    }
    best.map(|(_, s)| s)
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
