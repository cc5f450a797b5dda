//! Whiteout translation for overlayfs (image-spec layer.md "Whiteouts"; overlayfs.rst
//! "whiteouts and opaque directories"), as containerd's `archive.overlayConvertWhiteout` does:
//!
//! - `DIR/.wh.NAME` removes `NAME` of lower layers: it becomes a character device `DIR/NAME`
//!   with device number 0:0.
//! - `DIR/.wh..wh..opq` hides every lower entry of `DIR`: `DIR` gets the xattr
//!   `trusted.overlay.opaque=y`.
//! - Other `.wh..wh.*` names (aufs hardlink bookkeeping such as `.wh..wh.plnk`) are dropped.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Prefix of whiteout file names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Prefix of aufs metadata names that are not whiteouts.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a tar entry's base name means.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: apply the entry as it is.
    None,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: `NAME` is deleted; carries `NAME`.
    Remove(&'a OsStr),
    /// Other `.wh..wh.*` metadata: skip the entry.
    Meta,
}

/// Classifies a base name (the last path component of a tar entry).
pub fn classify(name: &OsStr) -> Whiteout<'_> {
    let b = name.as_bytes();
    if b == WHITEOUT_OPAQUE.as_bytes() {
        Whiteout::Opaque
    } else if b.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
        Whiteout::Meta
    } else if let Some(rest) = b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if rest.is_empty() || rest == b"." || rest == b".." {
            Whiteout::Meta
        } else {
            Whiteout::Remove(OsStr::from_bytes(rest))
        }
    } else {
        Whiteout::None
    }
}

/// Creates the overlayfs whiteout for `path`: a character device 0:0 with mode 0, replacing
/// nothing (the caller removes what was there). Needs CAP_MKNOD.
pub fn create_whiteout_device(path: &Path) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

/// Marks `dir` opaque for overlayfs (`trusted.overlay.opaque=y`). Needs CAP_SYS_ADMIN.
pub fn mark_opaque(dir: &Path) -> io::Result<()> {
    lsetxattr(dir, OPAQUE_XATTR, b"y")
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Sets the extended attribute `name` of `path` without following a final symlink
/// (lsetxattr(2)).
#[allow(unsafe_code)]
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name holds a NUL byte"))?;
    // SAFETY: p and n are valid NUL-terminated strings that outlive the call; value points to
    // value.len() readable bytes.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the extended attribute `name` of `path` without following a final symlink
/// (lgetxattr(2)); `Ok(None)` when it is not set.
#[allow(unsafe_code)]
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name holds a NUL byte"))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: p and n are valid NUL-terminated strings; buf has buf.len() writable bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc >= 0 {
        buf.truncate(rc as usize);
        return Ok(Some(buf));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENODATA) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("file")), Whiteout::None);
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), Whiteout::Opaque);
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), Whiteout::Meta);
        assert_eq!(classify(OsStr::new(".wh.gone")), Whiteout::Remove(OsStr::new("gone")));
        assert_eq!(classify(OsStr::new(".wh..hidden")), Whiteout::Remove(OsStr::new(".hidden")));
        assert_eq!(classify(OsStr::new(".wh.")), Whiteout::Meta);
        assert_eq!(classify(OsStr::new(".wh..")), Whiteout::Meta);
    }
}
