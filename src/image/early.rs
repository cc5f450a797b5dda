//! Unpacking an archive's layer files while the rest of the archive is still being read, for
//! [`super::archive::read_archive`].
//!
//! A docker-archive lists its layers in `manifest.json`, which `docker save` writes last, so an
//! import cannot know which files are layers (or which chain IDs they get) until it has read
//! the whole archive. Waiting for that made an import a serial spool followed by the unpacks;
//! a pull overlaps them. Here every spooled file that may be a layer (by name, then by its
//! first bytes: gzip, zstd or a ustar header) is handed, as soon as it is spooled, to one of
//! [`EARLY_UNPACKS`] threads that unpack it into `<spool>/u<n>/diff` with the same hostile-entry
//! checks as a pull, measuring the DiffID of a compressed layer on the way (the spool measured
//! the blob's digest; [`super::unpack::unpack_measured_file`]). Once the manifests are
//! read, the import adopts each unpacked directory under its layer's chain ID (a rename) instead
//! of unpacking, and checks its measured digests as before; a directory no manifest names is
//! deleted then. A file that only looked like a layer costs one wasted unpack, within the
//! budget below. A file whose digest the store already
//! knows (as a layer's blob digest or DiffID) is left to the import, which then mostly finds
//! its layer present: importing an image again, or one on a base the store has, does not
//! unpack what it will not keep.
//!
//! An early unpack is an optimization, never a verdict: it may give up, and the import then
//! unpacks the spooled file itself (or not at all, when no manifest names it). It gives up
//! past a budget of [`EARLY_RATIO`] times the file's size (at least [`EARLY_FLOOR`]), and is
//! not started when the spool's filesystem has less than twice the budget free, so a
//! decompression bomb that no manifest names cannot fill the disk under a valid import. An
//! unpack error is likewise only kept for the import to log: a layer whose early unpack
//! failed (a hostile entry, a full disk) is unpacked again by the import, whose error counts.

use super::unpack::{detect_compression, unpack_measured_file, Compression, UnpackedLayer};
use super::ImageError;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

/// Layer files of one archive unpacked at once (as a pull's `LAYER_DOWNLOADS`).
pub const EARLY_UNPACKS: usize = 3;

/// How many times its file's size an early unpack may write ([`super::unpack::apply_tar_within`]'s
/// budget). Layers of real images unpack to 2 to 5 times their gzip size; one past 16 (large
/// runs of zeros) is unpacked by the import instead, one at a time.
pub const EARLY_RATIO: u64 = 16;

/// The least budget of an early unpack, in bytes (small and plain-tar layers).
pub const EARLY_FLOOR: u64 = 16 << 20;

/// The budget of an early unpack of a `size`-byte file, in bytes.
pub fn early_budget(size: u64) -> u64 {
    size.saturating_mul(EARLY_RATIO).max(EARLY_FLOOR)
}

/// A spooled file to unpack if it is a layer.
#[derive(Debug)]
pub struct Job {
    /// The spooled file.
    pub path: PathBuf,
    /// Its `sha256:<hex>`, measured as it was spooled.
    pub digest: String,
    /// Its entry name in the archive (for errors).
    pub entry: String,
    /// Where to unpack it: `dir/diff` is created.
    pub dir: PathBuf,
}

/// A layer file unpacked ahead of its manifest.
#[derive(Debug)]
pub struct Unpacked {
    /// The directory holding `diff/` (the layer's files), inside the spool.
    pub dir: PathBuf,
    /// The digests and sizes the unpack measured.
    pub layer: UnpackedLayer,
}

/// What the unpackers did, by spooled file path: absent when the file was not a layer (or the
/// read failed before its turn came), else the unpack's result.
pub type Results = HashMap<PathBuf, Result<Unpacked, ImageError>>;

/// The name a layer has in unpack errors, as an import names it: `<entry> (archive <source>)`.
pub fn unpack_name(entry: &str, source: &str) -> String {
    format!("{entry} (archive {source})")
}

/// Whether an archive entry's name allows it to be a layer: not a JSON document by name, not
/// the layout marker or a legacy `repositories`/`VERSION`/`json` file.
pub fn may_be_layer(entry: &str) -> bool {
    let last = entry.rsplit('/').next().unwrap_or(entry);
    !(last.ends_with(".json") || matches!(last, "oci-layout" | "repositories" | "VERSION" | "json"))
}

/// Whether the file starts as a layer blob does: gzip or zstd magic, or a tar header (`ustar`
/// at offset 257, POSIX.1-1988 and GNU alike).
fn looks_like_layer(path: &Path) -> bool {
    let mut head = Vec::with_capacity(512);
    let read = std::fs::File::open(path).and_then(|f| f.take(512).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    match detect_compression(&head) {
        Compression::Gzip | Compression::Zstd => true,
        Compression::None => head.get(257..262) == Some(b"ustar".as_slice()),
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`; `None` when unknown.
fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Unpacks `job`'s file if it looks like a layer the store does not know, within its budget
/// ([`early_budget`]) and if the disk has room for twice that; removes its directory again on
/// error.
fn unpack_one(job: &Job, source: &str, known: &Known<'_>) -> Option<Result<Unpacked, ImageError>> {
    if known(&job.digest) || !looks_like_layer(&job.path) {
        return None;
    }
    let budget = early_budget(std::fs::metadata(&job.path).ok()?.len());
    let spool = job.path.parent().unwrap_or(&job.path);
    if free_bytes(spool).is_some_and(|free| free < budget.saturating_mul(2)) {
        tracing::debug!(entry = %job.entry, budget, "too little disk free to unpack a layer file early");
        return None;
    }
    let diff = job.dir.join("diff");
    if let Err(e) = std::fs::create_dir_all(&diff) {
        return Some(Err(ImageError::io(&diff, e)));
    }
    let result = unpack_measured_file(&job.path, &job.digest, &diff, &unpack_name(&job.entry, source), budget);
    if result.is_err() {
        let _ = crate::util::remove_dir_all_idempotent(&job.dir);
    }
    Some(result.map(|layer| Unpacked { dir: job.dir.clone(), layer }))
}

/// Whether the store has a layer with this `sha256:<hex>` as its blob digest or DiffID.
pub type Known<'a> = dyn Fn(&str) -> bool + Sync + 'a;

/// Runs `read` on this thread while [`EARLY_UNPACKS`] threads unpack the jobs it submits
/// (but those whose digest is `known`), and returns its result with theirs once every thread is
/// done. When `read` fails, jobs not yet started are dropped (the caller removes the spool).
/// Blocking.
pub fn with_unpackers<T>(
    source: &str,
    known: &Known<'_>,
    read: impl FnOnce(&mut dyn FnMut(Job)) -> Result<T, ImageError>,
) -> (Result<T, ImageError>, Results) {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel();
    let abort = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        for _ in 0..EARLY_UNPACKS {
            let res_tx = res_tx.clone();
            let (job_rx, abort) = (&job_rx, &abort);
            s.spawn(move || loop {
                // The lock is held only while waiting for the next job.
                let next = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = next else { return };
                if abort.load(Ordering::Relaxed) {
                    continue;
                }
                if let Some(r) = unpack_one(&job, source, known) {
                    let _ = res_tx.send((job.path, r));
                }
            });
        }
        let tx = job_tx;
        let out = read(&mut |job| {
            // A send fails only when every unpacker has panicked; the scope re-raises that
            // panic once `read` is done, and the import fails.
            let _ = tx.send(job);
        });
        if out.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(tx);
        out
    });
    drop(res_tx);
    (out, res_rx.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn names_that_cannot_be_layers() {
        for n in ["manifest.json", "index.json", "oci-layout", "repositories", "abc/json", "abc/VERSION", "0123.json"] {
            assert!(!may_be_layer(n), "{n}");
        }
        for n in ["abc/layer.tar", "blobs/sha256/0123", "layer.tar.gz"] {
            assert!(may_be_layer(n), "{n}");
        }
    }

    /// A tar of one file; the name is written raw, so `..` reaches the reader.
    fn one_file_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn content_decides_what_is_unpacked_and_errors_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layer = one_file_tar(b"hello", b"hi");
        let evil = one_file_tar(b"../x", b"x");
        let known_layer = one_file_tar(b"known", b"the store has it");
        let known_digest = sha(&known_layer);
        let files: [(&str, &[u8]); 4] =
            [("good/layer.tar", &layer), ("c", b"{\"not\": \"a layer\"}"), ("evil/layer.tar", &evil), ("known/layer.tar", &known_layer)];
        let known = |d: &str| d == known_digest;
        let (out, results) = with_unpackers("test", &known, |submit| {
            for (n, (entry, bytes)) in files.iter().enumerate() {
                let path = dir.path().join(format!("{n}"));
                std::fs::write(&path, bytes).unwrap();
                submit(Job { path, digest: sha(bytes), entry: entry.to_string(), dir: dir.path().join(format!("u{n}")) });
            }
            Ok(7)
        });
        assert_eq!(out.unwrap(), 7);
        assert_eq!(results.len(), 2, "neither the JSON file nor the known layer is unpacked: {results:?}");
        let good = results[&dir.path().join("0")].as_ref().unwrap();
        assert_eq!(std::fs::read(good.dir.join("diff/hello")).unwrap(), b"hi");
        assert_eq!((&good.layer.digest, &good.layer.diff_id), (&sha(&layer), &sha(&layer)), "a plain tar is its own diff");
        let err = results[&dir.path().join("2")].as_ref().unwrap_err().to_string();
        assert!(err.contains("evil/layer.tar (archive test)") && err.contains(".."), "{err}");
        assert!(!dir.path().join("u2").exists(), "a failed unpack leaves its directory");
    }
}
