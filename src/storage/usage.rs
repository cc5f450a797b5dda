//! Filesystem usage of a directory tree, as `du` counts it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Disk usage of the tree at `path`: (bytes, inodes). Bytes are allocated blocks (`st_blocks` *
/// 512, what `du` reports and what CRI `FilesystemUsage.used_bytes` means), inodes count every
/// entry including `path` itself. Symlinks are not followed; a file with several hard links is
/// counted once. Entries that vanish during the walk are skipped (containers write while we
/// count); other errors, and a missing `path`, are returned.
pub fn dir_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let root = std::fs::symlink_metadata(path)?;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut count = |m: &std::fs::Metadata, bytes: &mut u64, inodes: &mut u64| {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return;
        }
        *bytes += m.blocks() * 512;
        *inodes += 1;
    };
    count(&root, &mut bytes, &mut inodes);
    if !root.is_dir() {
        return Ok((bytes, inodes));
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            count(&m, &mut bytes, &mut inodes);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_inodes_hardlinks_once_and_not_symlink_targets() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(root.join("sub/a"), root.join("b")).unwrap();
        // A symlink to a big file outside the tree must count as the link only.
        std::fs::write(d.path().join("outside"), vec![2u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), root.join("link")).unwrap();
        let (bytes, inodes) = dir_usage(&root).unwrap();
        assert_eq!(inodes, 4, "tree, sub, a (= b), link");
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert!(bytes < 64 * 1024 + 5 * 4096 * 4, "hard link counted twice or symlink followed: {bytes}");
        assert!(dir_usage(&d.path().join("nope")).is_err());
        let (fb, fi) = dir_usage(&root.join("sub/a")).unwrap();
        assert_eq!(fi, 1);
        assert!(fb >= 64 * 1024);
    }
}
