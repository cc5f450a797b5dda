//! The built-in infra ("pause") binary.
//!
//! build.rs compiles `src/bin/berth-pause.rs` statically (`+crt-static`) into
//! `$OUT_DIR/berth-pause`; this module embeds it, so a pod sandbox needs no pause image: its
//! infra container's rootfs is a directory holding that one file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pause"));

/// The file name [`install`] writes.
pub const FILE_NAME: &str = "berth-pause";

/// The statically linked berth-pause executable (ELF bytes).
pub fn binary() -> &'static [u8] {
    BINARY
}

/// Writes the pause binary as `dir/berth-pause`, mode 0755, and returns its path. Creates `dir`
/// when missing. The write is atomic (temporary file + rename) and skipped when the file already
/// holds the same bytes with mode 0755, so a running infra's binary is never rewritten in place.
/// Errors: the I/O error of creating `dir`, writing, or chmod.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let same = std::fs::metadata(&path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o7777 == 0o755 && m.len() == BINARY.len() as u64)
        .unwrap_or(false)
        && std::fs::read(&path).map(|b| b == BINARY).unwrap_or(false);
    if !same {
        crate::util::write_atomic(&path, BINARY)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_static_elf() {
        let b = binary();
        assert_eq!(&b[..4], b"\x7fELF");
        // ELF64: a static executable has no PT_INTERP (3) or PT_DYNAMIC (2) program header.
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            assert!(p_type != 2 && p_type != 3, "berth-pause has a dynamic program header ({p_type})");
        }
    }

    #[test]
    fn install_writes_0755_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = install(&d.path().join("sub")).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(&p).unwrap(), binary());
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        install(&d.path().join("sub")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap()), ino);
        std::fs::write(&p, b"old").unwrap();
        install(&d.path().join("sub")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), binary());
    }
}
