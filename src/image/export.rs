//! [`ImageStore::export`]: images as one docker-archive, the format of `docker save`
//! (`manifest.json` = `[{Config, RepoTags, Layers}]`, blobs under `blobs/sha256/` as docker 25+
//! writes them), which `berth image import`, `docker load`, `ctr images import` and
//! `podman load` read.
//!
//! berth keeps layers unpacked (overlay diff directories), not as the blobs it pulled, so each
//! layer is written again from its directory as a canonical tar:
//! - entries in byte order of their paths, a directory before what it holds;
//! - ownership, permission bits and mtime (whole seconds) from the files; xattrs other than
//!   overlayfs' own (`trusted.overlay.*`) as PAX `SCHILY.xattr.*` records;
//! - a file with several links once, its other names as hardlink entries;
//! - overlayfs' whiteouts turned back into the image-spec's (layer.md "Whiteouts"): a 0:0
//!   character device `DIR/NAME` becomes an empty `DIR/.wh.NAME`, and a directory with
//!   `trusted.overlay.opaque=y` gets an empty `DIR/.wh..wh..opq` (the inverse of
//!   [`super::whiteout`]).
//!
//! The sha256 of that tar is the layer's diff ID. When it differs from the diff ID the image
//! was pulled with (another tool wrote the original tar, in another order or with other
//! headers), the config's `rootfs.diff_ids` is rewritten and the exported image has a new
//! config digest, that is a new image ID; its names are kept. An image exported again, or one
//! exported by berth and imported, gives the same bytes and ID. Every other byte of the config
//! is kept when nothing changes.

use super::store::{hex_of, Image, ImageStore};
use super::unpack::Hashing;
use super::ImageError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One exported image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportedImage {
    /// Its ID in the store.
    pub source_id: String,
    /// Its ID in the archive (`sha256:` of the config written): the same unless the layers'
    /// diff IDs changed (see the module docs).
    pub id: String,
    /// The names written as its `RepoTags`.
    pub repo_tags: Vec<String>,
}

/// What the blocking writer needs of one image.
struct Source {
    image: Image,
    config: Vec<u8>,
    layers: Vec<(String, PathBuf)>,
}

impl ImageStore {
    /// Writes the images named by `refs` (tags, IDs or unique ID prefixes, as
    /// [`ImageStore::resolve`] takes them) to `out` as one docker-archive (plain tar), each
    /// with all its names, layers shared between them written once. The GC lock is held shared
    /// meanwhile, so no layer goes away underneath. Layers are staged in `<root>/images/tmp/`
    /// (each needs its size there while it is written).
    ///
    /// Errors: [`ImageError::Archive`] naming `output` for an image the store does not have or
    /// whose config it did not keep (pulled before it kept configs: pull it again);
    /// [`ImageError::Io`] naming `output` for a layer that cannot be read or `out` that cannot
    /// be written.
    pub async fn export<W: Write + Send + 'static>(&self, refs: &[String], out: W, output: &str) -> Result<Vec<ExportedImage>, ImageError> {
        let _gc = self.gc.read().await;
        let mut sources = Vec::new();
        for r in refs {
            let missing = |m: String| ImageError::Archive { archive: output.to_string(), message: m };
            let image = self.resolve(r)?.ok_or_else(|| missing(format!("image {r:?}: not in the store")))?;
            let config = self.config_blob(&image.id)?.ok_or_else(|| {
                missing(format!(
                    "image {r:?} ({}): its config was not kept (pulled by a berth older than the one that keeps configs); pull it again to export it",
                    image.id
                ))
            })?;
            let layers = image.chain_ids.iter().cloned().zip(self.layer_dirs(&image)?).collect();
            sources.push(Source { image, config, layers });
        }
        let tmp = self.dir.join("tmp").join(format!("export-{}", &crate::util::new_id()[..12]));
        let output = output.to_string();
        tokio::task::spawn_blocking(move || {
            let result = write_archive(&sources, &tmp, out);
            let _ = std::fs::remove_dir_all(&tmp);
            result.map_err(|e| ImageError::io(&output, format!("writing the archive: {e}")))
        })
        .await
        .map_err(|e| ImageError::io(&self.dir, format!("export task failed: {e}")))?
    }
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", hex_of(digest))
}

fn write_archive<W: Write>(sources: &[Source], tmp: &Path, out: W) -> io::Result<Vec<ExportedImage>> {
    std::fs::create_dir_all(tmp)?;
    let mut ar = tar::Builder::new(out);
    // chain ID -> diff ID of the tar written for it.
    let mut written: HashMap<String, String> = HashMap::new();
    let mut configs_written: Vec<String> = Vec::new();
    let mut manifest = Vec::new();
    let mut exported = Vec::new();
    for s in sources {
        let mut diff_ids = Vec::new();
        for (chain, dir) in &s.layers {
            if let Some(d) = written.get(chain) {
                diff_ids.push(d.clone());
                continue;
            }
            let staged = tmp.join("layer");
            let mut w = Hashing::new(io::BufWriter::new(std::fs::File::create(&staged)?));
            write_layer(dir, &mut w)?;
            w.flush()?;
            let (diff_id, size) = w.finish();
            let mut h = file_header(size);
            ar.append_data(&mut h, blob_name(&diff_id), std::fs::File::open(&staged)?)?;
            std::fs::remove_file(&staged)?;
            written.insert(chain.clone(), diff_id.clone());
            diff_ids.push(diff_id);
        }
        let config = config_with(&s.config, &diff_ids)?;
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        if !configs_written.contains(&id) {
            let mut h = file_header(config.len() as u64);
            ar.append_data(&mut h, blob_name(&id), &config[..])?;
            configs_written.push(id.clone());
        }
        manifest.push(serde_json::json!({
            "Config": blob_name(&id),
            "RepoTags": s.image.repo_tags,
            "Layers": diff_ids.iter().map(|d| blob_name(d)).collect::<Vec<_>>(),
        }));
        exported.push(ExportedImage { source_id: s.image.id.clone(), id, repo_tags: s.image.repo_tags.clone() });
    }
    let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    let mut h = file_header(manifest.len() as u64);
    ar.append_data(&mut h, "manifest.json", &manifest[..])?;
    ar.into_inner()?.flush()?;
    Ok(exported)
}

/// `config` with `rootfs.diff_ids` = `diff_ids`: the same bytes when they already say so.
fn config_with(config: &[u8], diff_ids: &[String]) -> io::Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config).map_err(io::Error::other)?;
    if v.pointer("/rootfs/diff_ids") == Some(&serde_json::json!(diff_ids)) {
        return Ok(config.to_vec());
    }
    let rootfs = v
        .as_object_mut()
        .ok_or_else(|| io::Error::other("the image config is not a JSON object"))?
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers"}));
    rootfs
        .as_object_mut()
        .ok_or_else(|| io::Error::other("the image config's rootfs is not a JSON object"))?
        .insert("diff_ids".into(), serde_json::json!(diff_ids));
    serde_json::to_vec(&v).map_err(io::Error::other)
}

/// A regular-file header of `size` bytes, mode 0644, owned by root, mtime 0: for the
/// archive's own files (blobs, manifest).
fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes the layer directory `dir` as a canonical layer tar (see the module docs).
pub fn write_layer<W: Write>(dir: &Path, out: W) -> io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(&mut b, dir, Path::new(""), &mut links)?;
    b.into_inner()?.flush()
}

fn header_of(md: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(md.mtime().max(0) as u64);
    h
}

/// PAX records (`SCHILY.xattr.NAME`, value) of one entry.
type PaxRecords = Vec<(String, Vec<u8>)>;

/// The xattrs of `path` (not followed) that belong in a layer, as PAX records, and whether
/// overlayfs marks it opaque (`trusted.overlay.opaque=y`, which is not among the records).
fn pax_xattrs(path: &Path) -> io::Result<(PaxRecords, bool)> {
    let mut out = Vec::new();
    let mut opaque = false;
    let names = match xattr::list(path) {
        Ok(n) => n,
        // A filesystem without xattrs has none to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((out, false)),
        Err(e) => return Err(e),
    };
    let mut names: Vec<OsString> = names.collect();
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let Some(value) = xattr::get(path, &name)? else { continue };
        if name == super::whiteout::OPAQUE_XATTR {
            opaque = value == b"y";
        } else if !name.starts_with("trusted.overlay.") {
            out.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    Ok((out, opaque))
}

fn walk<W: Write>(b: &mut tar::Builder<W>, abs: &Path, rel: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let mut names: Vec<OsString> = std::fs::read_dir(abs)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = abs.join(&name);
        let entry = rel.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            // An overlayfs whiteout: the image-spec's `.wh.NAME`.
            let mut wh = OsString::from(super::whiteout::WHITEOUT_PREFIX);
            wh.push(&name);
            let mut h = header_of(&md, tar::EntryType::Regular);
            b.append_data(&mut h, rel.join(wh), io::empty())?;
            continue;
        }
        let (xattrs, opaque) = pax_xattrs(&path)?;
        if !xattrs.is_empty() {
            b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            let mut h = header_of(&md, tar::EntryType::Directory);
            b.append_data(&mut h, &entry, io::empty())?;
            if opaque {
                let mut h = header_of(&md, tar::EntryType::Regular);
                h.set_mode(0o644);
                b.append_data(&mut h, entry.join(super::whiteout::WHITEOUT_OPAQUE), io::empty())?;
            }
            walk(b, &path, &entry, links)?;
        } else if ft.is_symlink() {
            let mut h = header_of(&md, tar::EntryType::Symlink);
            b.append_link(&mut h, &entry, std::fs::read_link(&path)?)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    let mut h = header_of(&md, tar::EntryType::Link);
                    b.append_link(&mut h, &entry, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), entry.clone());
            }
            let mut h = header_of(&md, tar::EntryType::Regular);
            h.set_size(md.len());
            // Layer directories never change once unpacked: the length read is the length written.
            b.append_data(&mut h, &entry, std::fs::File::open(&path)?)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = header_of(&md, kind);
            h.set_device_major(libc::major(md.rdev()))?;
            h.set_device_minor(libc::minor(md.rdev()))?;
            b.append_data(&mut h, &entry, io::empty())?;
        }
        // Sockets are not layer content.
    }
    Ok(())
}

impl ImageStore {
    /// [`ImageStore::export`] into the file `path`, which appears whole or not at all: written
    /// as `<path>.tmp-<rand>` beside it, synced, then renamed over `path`.
    ///
    /// Errors: those of [`ImageStore::export`]; [`ImageError::Io`] naming `path` when it cannot
    /// be created or renamed (nothing of it is left).
    pub async fn export_to_file(&self, refs: &[String], path: &Path) -> Result<Vec<ExportedImage>, ImageError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", &crate::util::new_id()[..12]));
        let file = std::fs::File::create(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        let out = SyncOnFlush(io::BufWriter::with_capacity(1 << 20, file));
        let result = self.export(refs, out, &path.display().to_string()).await;
        let result = result.and_then(|images| std::fs::rename(&tmp, path).map(|()| images).map_err(|e| ImageError::io(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// A buffered file whose last flush also syncs it to disk (the archive is complete only then).
struct SyncOnFlush(io::BufWriter<std::fs::File>);

impl Write for SyncOnFlush {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_all()
    }
}
