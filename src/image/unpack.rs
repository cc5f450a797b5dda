//! Applying one layer (image-spec layer.md) to an empty diff directory.
//!
//! The blob is read once: its bytes are hashed (the layer digest), decompressed (gzip, zstd, or
//! none, told apart by magic bytes as containerd's `compression.DecompressStream` does), hashed
//! again (the DiffID) and fed to the tar reader. Entries are applied by [`apply_tar`]:
//! owners, modes, mtimes, symlinks, hardlinks within the layer, device nodes, and
//! `SCHILY.xattr.*` PAX records are kept; whiteouts are translated for overlayfs ([`whiteout`]).
//!
//! Hostile entries fail the whole layer with [`ImageError::Unpack`] naming the entry: `..`
//! components, parent symlinks whose target leaves the layer, hardlinks whose target is not an
//! entry of this layer. A leading `/` or `./` is stripped, like containerd. A parent component
//! that is a symlink is resolved inside the diff directory (absolute targets are rooted at it);
//! the entry itself is never followed.

use super::whiteout::{self, Whiteout};
use super::ImageError;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`...tar+gzip`, docker `rootfs.diff.tar.gzip`).
    Gzip,
    /// zstd (`...tar+zstd`).
    Zstd,
}

/// Tells the compression from the first bytes of a blob: `1f 8b` gzip, `28 b5 2f fd` zstd.
pub fn detect_compression(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Digests and sizes measured while unpacking a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// `sha256:<hex>` of the blob as stored (compressed).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the DiffID).
    pub diff_id: String,
    /// Blob size in bytes.
    pub compressed_size: u64,
    /// Uncompressed tar size in bytes.
    pub uncompressed_size: u64,
}

/// A reader or writer that takes the sha256 and the byte count of what passes through it:
/// the blob and diff digests of a pull, an import's spooled blobs, an export's layer tars.
pub(super) struct Hashing<T> {
    inner: T,
    /// `None` when only counting ([`Hashing::counting`]).
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T> Hashing<T> {
    pub(super) fn new(inner: T) -> Self {
        Hashing { inner, hasher: Some(Sha256::new()), count: 0 }
    }
    /// Counts the bytes without hashing them (a blob whose digest was measured already);
    /// [`Hashing::finish`] then gives an empty digest.
    fn counting(inner: T) -> Self {
        Hashing { inner, hasher: None, count: 0 }
    }
    /// `("sha256:<hex>", bytes)` of everything that passed (`""` for the digest when counting).
    pub(super) fn finish(self) -> (String, u64) {
        (self.hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize()))).unwrap_or_default(), self.count)
    }
}

/// Unpacks the blob file `blob` into the (empty, existing) directory `dest`: [`unpack_reader`]
/// over the file. Blocking.
pub fn unpack_blob_file(blob: &Path, dest: &Path, layer: &str) -> Result<UnpackedLayer, ImageError> {
    let f = fs::File::open(blob).map_err(|e| ImageError::io(blob, e))?;
    unpack_reader(f, dest, layer)
}

/// [`unpack_blob_file`] for a file whose sha256 `digest` (`sha256:<hex>`) was measured as it
/// was written (an import's spool, [`super::archive`]): the blob is not hashed again, and
/// `digest` is returned as [`UnpackedLayer::digest`] (and as the DiffID of a plain tar). The
/// caller vouches that the file has not changed since. Blocking.
///
/// `budget` bounds what the unpack may write, in bytes, as [`apply_tar_within`] counts them:
/// past it the unpack stops with [`ImageError::Unpack`] (`dest` keeps what was written).
pub fn unpack_measured_file(blob: &Path, digest: &str, dest: &Path, layer: &str, budget: u64) -> Result<UnpackedLayer, ImageError> {
    let f = fs::File::open(blob).map_err(|e| ImageError::io(blob, e))?;
    unpack_stream(f, Some(digest), dest, layer, budget)
}

/// Unpacks a layer blob read from `reader` (plain, gzip or zstd, told by its first bytes) into
/// the (empty, existing) directory `dest` in one pass, returning the digests it measured over
/// the blob and over the uncompressed tar, and their sizes. The whole stream is read, past the
/// tar's end-of-archive blocks, so both digests cover every byte. `layer` names the layer in
/// errors (its digest). Blocking: call from `spawn_blocking`. The caller compares the digests
/// with the manifest and config, and removes `dest` on any error.
pub fn unpack_reader<R: Read>(reader: R, dest: &Path, layer: &str) -> Result<UnpackedLayer, ImageError> {
    unpack_stream(reader, None, dest, layer, u64::MAX)
}

/// [`unpack_reader`], with the blob's digest given (`Some`: not measured) or measured (`None`),
/// writing at most `budget` bytes ([`apply_tar_within`]).
fn unpack_stream<R: Read>(reader: R, measured: Option<&str>, dest: &Path, layer: &str, budget: u64) -> Result<UnpackedLayer, ImageError> {
    let buffered = io::BufReader::with_capacity(1 << 16, reader);
    let mut outer = if measured.is_some() { Hashing::counting(buffered) } else { Hashing::new(buffered) };
    let early_err = |e: io::Error| ImageError::Unpack {
        layer: layer.to_string(),
        entry: String::new(),
        message: format!("reading the layer blob: {e}"),
    };
    // The first bytes tell the compression; they are hashed once (here) and replayed to the
    // decoder from `magic`.
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match outer.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(early_err(e)),
        }
    }
    let compression = detect_compression(&magic[..got]);
    let read_err = |e: io::Error| ImageError::Unpack {
        layer: layer.to_string(),
        entry: String::new(),
        message: format!("reading {compression:?} stream: {e}"),
    };
    let blob = io::Cursor::new(&magic[..got]).chain(&mut outer);
    let inner = match compression {
        // A plain tar is its own diff: the blob's digest is the DiffID, hashed once.
        Compression::None => {
            let mut plain = blob;
            apply_tar_within(&mut plain, dest, layer, budget)?;
            io::copy(&mut plain, &mut io::sink()).map_err(read_err)?;
            None
        }
        Compression::Gzip | Compression::Zstd => {
            let decoder: Box<dyn Read + '_> = match compression {
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob).map_err(read_err)?),
                _ => Box::new(flate2::read::MultiGzDecoder::new(blob)),
            };
            let mut inner = Hashing::new(decoder);
            apply_tar_within(&mut inner, dest, layer, budget)?;
            // The tar reader stops at the end-of-archive blocks; the DiffID covers every byte.
            io::copy(&mut inner, &mut io::sink()).map_err(read_err)?;
            Some(inner.finish())
        }
    };
    io::copy(&mut outer, &mut io::sink()).map_err(read_err)?;
    let (digest, compressed_size) = outer.finish();
    let digest = measured.map(str::to_string).unwrap_or(digest);
    let (diff_id, uncompressed_size) = inner.unwrap_or_else(|| (digest.clone(), compressed_size));
    Ok(UnpackedLayer { digest, diff_id, compressed_size, uncompressed_size })
}

/// Strips a leading `/` and `./` and checks that every component is a plain name.
/// Returns the relative path (empty for the layer root) or what is wrong.
fn sanitize(raw: &[u8]) -> Result<PathBuf, String> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err("path has a '..' component".into()),
            Component::Prefix(_) => return Err("path has a prefix".into()),
        }
    }
    Ok(out)
}

enum Step {
    Name(OsString),
    Up,
}

/// Resolves the directory `rel` inside `root` without ever leaving it: symlinks met on the way
/// are followed with their targets taken relative to `root` (absolute) or to their own directory,
/// and fail when `..` climbs above `root`. Missing directories are created (mode 0755) when
/// `create`. Returns the real path under `root`.
fn resolve_dir_in_root(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, String> {
    let mut todo: VecDeque<Step> = rel.components().map(|c| Step::Name(c.as_os_str().to_owned())).collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Up => {
                if !cur.pop() {
                    return Err(format!("a symlink in {} leads outside the layer", rel.display()));
                }
                continue;
            }
            Step::Name(n) => n,
        };
        let here = root.join(&cur).join(&name);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many symlinks resolving {}", rel.display()));
                }
                let target = fs::read_link(&here).map_err(|e| format!("readlink {}: {e}", here.display()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(Step::Name(n.to_owned())),
                        Component::ParentDir => todo.push_front(Step::Up),
                        _ => {}
                    }
                }
            }
            Ok(m) if m.is_dir() => cur.push(&name),
            Ok(_) => return Err(format!("parent {} is not a directory", cur.join(&name).display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new().mode(0o755).create(&here).map_err(|e| format!("mkdir {}: {e}", here.display()))?;
                cur.push(&name);
            }
            Err(e) => return Err(format!("{}: {e}", cur.join(&name).display())),
        }
    }
    Ok(root.join(cur))
}

/// Removes what is at `path` (not following a symlink), unless it is a directory and `keep_dir`.
/// Returns whether a directory was kept.
fn remove_existing(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path)?;
        }
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(false)
}

/// Runs `make`, which creates the node `path` and fails with `AlreadyExists` when something is
/// there; then removes that (a directory with all it holds, as tar does) and runs `make` again,
/// setting `replaced`. Trying first spares a stat per entry: a layer mostly adds new names.
fn create_replacing<T>(path: &Path, replaced: &mut bool, mut make: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match make() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            *replaced = true;
            remove_existing(path, false)?;
            make()
        }
        r => r,
    }
}

/// The last parent directory resolved ([`resolve_dir_in_root`]): entries of one directory come
/// together in a tar, so most need no resolving. Valid while entries only add new names: adding
/// a name cannot change how existing names resolve. Cleared by whatever removes or replaces a
/// node (a whiteout, an entry over an existing name) or adds a symlink: even inside the cached
/// directory, that node may be one its resolution went through (`s` -> `e/f/..`).
#[derive(Default)]
struct ParentCache(Option<(PathBuf, PathBuf)>);

impl ParentCache {
    fn resolve(&mut self, root: &Path, rel: &Path) -> Result<PathBuf, String> {
        if let Some((r, real)) = &self.0 {
            if r == rel {
                return Ok(real.clone());
            }
        }
        let real = resolve_dir_in_root(root, rel, true)?;
        self.0 = Some((rel.to_path_buf(), real.clone()));
        Ok(real)
    }
    fn clear(&mut self) {
        self.0 = None;
    }
}

fn mtime_spec(mtime: u64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(mtime as libc::time_t, 0)
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let t = mtime_spec(mtime);
    utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

/// Applies the tar stream `reader` to `dest` (see the module docs). Blocking.
///
/// Ownership is kept only when running as root (otherwise chown would fail); whiteout devices
/// and `trusted.*` xattrs need root too.
pub fn apply_tar<R: Read>(reader: R, dest: &Path, layer: &str) -> Result<(), ImageError> {
    apply_tar_within(reader, dest, layer, u64::MAX)
}

/// What an entry costs against an unpack budget besides its data, in bytes: one tar block,
/// for the inode and directory entry it makes.
pub const ENTRY_COST: u64 = 512;

/// [`apply_tar`] writing at most `budget` bytes: each entry costs [`ENTRY_COST`] plus the
/// data of a regular file. The entry that would pass the budget fails the layer with
/// [`ImageError::Unpack`] ("unpacks to more than N bytes"), having written at most one byte
/// past `budget`. A guard against decompression bombs where the caller can afford to give up
/// (an import's early unpack, [`super::early`]); a pull checks the layer's digest instead.
pub fn apply_tar_within<R: Read>(reader: R, dest: &Path, layer: &str, budget: u64) -> Result<(), ImageError> {
    let mut spent: u64 = 0;
    let same_owner = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    let mut dir_mtimes: Vec<(PathBuf, u64)> = Vec::new();
    let mut parents = ParentCache::default();
    let fail = |entry: &str, message: String| ImageError::Unpack { layer: layer.to_string(), entry: entry.to_string(), message };
    let entries = archive.entries().map_err(|e| fail("", format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail("", format!("reading tar: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let err = |m: String| fail(&shown, m);
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        spent = spent.saturating_add(ENTRY_COST);
        let over_budget = || err(format!("unpacks to more than {budget} bytes; stopped"));
        if spent > budget {
            return Err(over_budget());
        }
        let rel = sanitize(&raw).map_err(err)?;
        let mut uid = header.uid().map_err(|e| err(format!("uid: {e}")))?;
        let mut gid = header.gid().map_err(|e| err(format!("gid: {e}")))?;
        let mode = header.mode().map_err(|e| err(format!("mode: {e}")))? & 0o7777;
        let mut mtime = header.mtime().unwrap_or(0);
        let link_name = entry.link_name_bytes().map(|l| l.into_owned());
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        // PAX records override the ustar fields (large ids, sub-second or large mtimes).
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value().unwrap_or("");
                let int = || value.split('.').next().and_then(|v| v.parse::<u64>().ok());
                match key {
                    "uid" => uid = int().ok_or_else(|| err(format!("PAX uid {value:?} is not a number")))?,
                    "gid" => gid = int().ok_or_else(|| err(format!("PAX gid {value:?} is not a number")))?,
                    "mtime" => mtime = int().unwrap_or(mtime),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        // A regular file stays open for its metadata (fchown, fchmod, futimens: no path walks).
        let mut file: Option<fs::File> = None;
        let (path, is_dir) = if rel.as_os_str().is_empty() {
            if kind != tar::EntryType::Directory {
                return Err(err("the layer root must be a directory".into()));
            }
            (dest.to_path_buf(), true)
        } else {
            let name = rel.file_name().map(OsStr::to_owned).unwrap_or_default();
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            let parent = parents.resolve(dest, parent_rel).map_err(err)?;
            match whiteout::classify(&name) {
                Whiteout::Meta => continue,
                Whiteout::Opaque => {
                    whiteout::mark_opaque(&parent).map_err(|e| err(format!("setting {}: {e}", whiteout::OPAQUE_XATTR)))?;
                    continue;
                }
                Whiteout::Remove(hidden) => {
                    parents.clear();
                    let target = parent.join(hidden);
                    remove_existing(&target, false).map_err(|e| err(format!("replacing {}: {e}", target.display())))?;
                    whiteout::create_whiteout_device(&target).map_err(|e| err(format!("mknod whiteout {}: {e}", target.display())))?;
                    if same_owner {
                        std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32)).map_err(|e| err(format!("chown: {e}")))?;
                    }
                    // The `.wh.` entry's mtime, so that an export writes the whiteout back as it
                    // came (not the time of this unpack).
                    set_mtime(&target, mtime).map_err(|e| err(format!("mtime: {e}")))?;
                    continue;
                }
                Whiteout::None => {}
            }
            let path = parent.join(&name);
            let is_dir = kind == tar::EntryType::Directory;
            let mut replaced = false;
            let replacing = |e: io::Error| err(format!("replacing {}: {e}", path.display()));
            match kind {
                tar::EntryType::Directory => match fs::DirBuilder::new().mode(0o700).create(&path) {
                    Ok(()) => {}
                    // An existing directory is kept (its metadata updated); anything else goes.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !remove_existing(&path, true).map_err(replacing)? {
                            replaced = true;
                            fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| err(format!("mkdir: {e}")))?;
                        }
                    }
                    Err(e) => return Err(err(format!("mkdir: {e}"))),
                },
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                    let mut f = create_replacing(&path, &mut replaced, || {
                        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
                    })
                    .map_err(|e| err(format!("create: {e}")))?;
                    // One byte past what is left tells a file that does not fit.
                    let left = budget - spent;
                    let written =
                        io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut f).map_err(|e| err(format!("write: {e}")))?;
                    if written > left {
                        return Err(over_budget());
                    }
                    spent += written;
                    file = Some(f);
                }
                tar::EntryType::Symlink => {
                    let target = link_name.clone().ok_or_else(|| err("symlink without a target".into()))?;
                    parents.clear();
                    create_replacing(&path, &mut replaced, || std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path))
                        .map_err(|e| err(format!("symlink: {e}")))?;
                }
                tar::EntryType::Link => {
                    let target_raw = link_name.clone().ok_or_else(|| err("hardlink without a target".into()))?;
                    let target_rel = sanitize(&target_raw).map_err(|m| err(format!("hardlink target: {m}")))?;
                    let tname = target_rel.file_name().ok_or_else(|| err("hardlink target is the layer root".into()))?;
                    let tparent = resolve_dir_in_root(dest, target_rel.parent().unwrap_or(Path::new("")), false)
                        .map_err(|m| err(format!("hardlink target {}: {m}", target_rel.display())))?;
                    let target = tparent.join(tname);
                    match fs::symlink_metadata(&target) {
                        Ok(m) if !m.is_dir() => {}
                        _ => {
                            return Err(err(format!(
                                "hardlink target {} is not a file of this layer",
                                String::from_utf8_lossy(&target_raw)
                            )))
                        }
                    }
                    create_replacing(&path, &mut replaced, || fs::hard_link(&target, &path)).map_err(|e| err(format!("link: {e}")))?;
                    if replaced {
                        parents.clear();
                    }
                    // A hardlink shares the target's inode and metadata.
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let sflag = match kind {
                        tar::EntryType::Char => SFlag::S_IFCHR,
                        tar::EntryType::Block => SFlag::S_IFBLK,
                        _ => SFlag::S_IFIFO,
                    };
                    create_replacing(&path, &mut replaced, || {
                        mknod(&path, sflag, Mode::from_bits_truncate(0o600), makedev(major as u64, minor as u64)).map_err(io::Error::from)
                    })
                    .map_err(|e| err(format!("mknod: {e}")))?;
                }
                other => {
                    tracing::debug!(layer, entry = %shown, "skipping tar entry of type {other:?}");
                    continue;
                }
            }
            if replaced {
                parents.clear();
            }
            (path, is_dir)
        };
        let is_symlink = kind == tar::EntryType::Symlink;
        if same_owner {
            match &file {
                Some(f) => std::os::unix::fs::fchown(f, Some(uid as u32), Some(gid as u32)),
                None => std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32)),
            }
            .map_err(|e| err(format!("chown {uid}:{gid}: {e}")))?;
        }
        if !is_symlink {
            // After chown: chown clears setuid/setgid bits.
            let perms = fs::Permissions::from_mode(mode);
            match &file {
                Some(f) => f.set_permissions(perms),
                None => fs::set_permissions(&path, perms),
            }
            .map_err(|e| err(format!("chmod {mode:o}: {e}")))?;
        }
        for (name, value) in &xattrs {
            if let Err(e) = whiteout::lsetxattr(&path, name, value) {
                match e.raw_os_error() {
                    Some(libc::ENOTSUP) | Some(libc::EPERM) => {
                        tracing::warn!(layer, entry = %shown, xattr = %name, "xattr not kept: {e}")
                    }
                    _ => return Err(err(format!("xattr {name}: {e}"))),
                }
            }
        }
        if is_dir {
            dir_mtimes.push((path, mtime));
        } else {
            let t = mtime_spec(mtime);
            match &file {
                Some(f) => nix::sys::stat::futimens(f, &t, &t).map_err(io::Error::from),
                None => set_mtime(&path, mtime),
            }
            .map_err(|e| err(format!("mtime: {e}")))?;
        }
    }
    // Directory mtimes last: creating their children changed them.
    for (path, mtime) in dir_mtimes.iter().rev() {
        set_mtime(path, *mtime).map_err(|e| ImageError::io(path, format!("layer {layer}: mtime: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod unpack_tests;
