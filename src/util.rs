//! Small helpers shared by several modules: object IDs, timestamps, atomic file writes.
//!
//! The clock, atomic writes and message cuts live in the monitor's crate (`berth_monitor::util`),
//! which both sides share, and are re-exported here.

use std::path::Path;

pub use berth_monitor::util::{now_nanos, rfc3339_nano, truncate_message, write_atomic};

/// A new random object ID: 64 lowercase hex characters (32 bytes from /dev/urandom), the shape
/// CRI-O and containerd give pod sandbox and container IDs.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf)).is_ok();
    if !filled {
        // /dev/urandom is always there on Linux; fall back to time and pid entropy rather than panic.
        let n = now_nanos() as u128 ^ ((std::process::id() as u128) << 64);
        buf[..16].copy_from_slice(&n.to_le_bytes());
    }
    hex::encode(buf)
}

/// Removes a directory tree, treating "already gone" as success (undo steps must be idempotent).
///
/// Refuses (`ResourceBusy`, nothing removed) when anything at or below `path` is still a mount point, as
/// listed in `/proc/self/mountinfo`: a removal must never walk into a bind-mounted volume or a
/// pod's tmpfs (bind mounts of the same filesystem share `st_dev`, so only the mount table
/// tells). An unreadable mount table is an error too.
pub fn remove_dir_all_idempotent(path: &Path) -> std::io::Result<()> {
    let canon = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(mp) = crate::mountinfo::points_under(&table, &canon).into_iter().next() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!("{} is still a mount point: not removing {}", mp.display(), path.display()),
        ));
    }
    match std::fs::remove_dir_all(&canon) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A blocking [`std::io::Read`] over byte chunks an async task sends: the chunks in order, EOF
/// when the sender is dropped, an `Err` item as a read error. For a blocking consumer (an
/// unpack, an archive reader) fed by an HTTP body. Blocks in `read`: use it on a blocking thread
/// only (`spawn_blocking`), never on the runtime's.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl ChannelReader {
    /// Reads what arrives on `rx`.
    pub fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> Self {
        ChannelReader { rx, chunk: bytes::Bytes::new() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }
}
