//! Reading image archives into images with their config bytes and layer files, for
//! [`super::ImageStore::import`].
//!
//! Two formats, told apart by their files (the archive itself may be plain, gzip or zstd, told
//! apart by magic bytes as layers are, [`super::unpack::detect_compression`]):
//! - **docker-archive** (`docker save`): `manifest.json`, a JSON array of
//!   `{"Config": FILE, "RepoTags": [NAME...] | null, "Layers": [FILE...]}`, the layers base
//!   first, each a tar file (gzip'd or not). docker 25+ also writes an OCI image layout beside
//!   it (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) and names its files by that layout;
//!   `manifest.json` is read when present, as `docker load` does. A layer entry may be a
//!   symlink or hardlink to another one (older `docker save` links repeated layers).
//! - **OCI image layout** (image-spec image-layout.md): `oci-layout` (`imageLayoutVersion`
//!   1.x), `index.json` (an image index, image-spec image-index.md) and content-addressed
//!   `blobs/<alg>/<hex>`. Each entry of `index.json` is one image: an image manifest, or an image
//!   index resolved to this machine's platform as a pull does. Names come from the entry's
//!   annotations `io.containerd.image.name` (a full reference) or
//!   `org.opencontainers.image.ref.name` when it is a full reference; a bare tag there
//!   (`latest`) names no repository and is ignored. Entries for another platform are skipped.
//!
//! An archive may list layers before its manifest (`docker save` does), so every regular file
//! is first spooled to a directory of the store's `tmp/` ([`read_archive`]); the [`Archive`]
//! owns that directory and removes it when dropped. Files whose name carries a digest
//! (`blobs/sha256/<hex>`, docker's `<hex>.json` config) or that may be layers
//! ([`early::may_be_layer`], e.g. `<id>/layer.tar`) have their sha256 measured on the way; a
//! digest in a name is checked when the name is referenced. Other files (a config named
//! `c.json`) are hashed only if something needs their digest (a config's, for the image ID).
//! Files that may be layers are unpacked while the rest of the archive is read, without
//! hashing them again ([`super::early`]); the import adopts what its manifests name
//! ([`Archive::take_unpacked`]).

use super::early::{self, Unpacked};
use super::reference::is_hex64;
use super::unpack::{detect_compression, Compression, Hashing};
use super::ImageError;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Media type of a docker schema2 image manifest, recorded for docker-archive images.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Largest JSON document (manifest, index, image config) read into memory, in bytes.
const MAX_JSON: u64 = 32 << 20;

/// One image of an archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// `sha256:<hex>` of [`ArchiveImage::config`]: the image ID.
    pub id: String,
    /// The image config JSON (image-spec config.md), byte for byte as in the archive.
    pub config: Vec<u8>,
    /// The config's entry name in the archive (for errors).
    pub config_entry: String,
    /// Names as the archive spells them (docker `RepoTags`, OCI annotations), not normalized.
    pub names: Vec<String>,
    /// The layer blobs, base first.
    pub layers: Vec<ArchiveLayer>,
    /// Media type of the image manifest; [`DOCKER_MANIFEST`] for a docker-archive.
    pub media_type: String,
}

impl ArchiveImage {
    /// How errors name the image: its first name, else its config entry.
    pub fn display_name(&self) -> String {
        self.names.first().cloned().unwrap_or_else(|| self.config_entry.clone())
    }
}

/// One layer blob of an archive, spooled to a file.
#[derive(Debug, Clone)]
pub struct ArchiveLayer {
    /// The entry name in the archive, e.g. `blobs/sha256/<hex>` or `<id>/layer.tar`.
    pub entry: String,
    /// The spooled file.
    pub path: PathBuf,
    /// `sha256:<hex>` of the blob as stored (compressed or not), checked against the name or
    /// descriptor that carries it; `None` when nothing in the archive names it (docker's
    /// `<id>/layer.tar`: the unpack measures it, and checks the diff ID).
    pub digest: Option<String>,
    /// Blob size in bytes.
    pub size: u64,
}

/// The images of one archive and the spool directory holding their files (removed on drop).
#[derive(Debug)]
pub struct Archive {
    /// The images, in the archive's order; one per image ID (names of duplicates merged).
    pub images: Vec<ArchiveImage>,
    /// Layer files unpacked while the archive was read, by spooled path ([`super::early`]).
    unpacked: std::sync::Mutex<early::Results>,
    spool: Spool,
}

impl Archive {
    /// Takes what the early unpack made of the spooled file `path` ([`ArchiveLayer::path`]):
    /// `Some(Ok)` the directory holding its `diff/` and the digests measured (the caller renames
    /// it into the store and checks the digests), `Some(Err)` why the early unpack failed or
    /// gave up (the caller unpacks the spooled file itself), `None` when it was not unpacked or
    /// was taken already (the caller unpacks the spooled file).
    pub fn take_unpacked(&self, path: &Path) -> Option<Result<Unpacked, ImageError>> {
        self.unpacked.lock().ok()?.remove(path)
    }

    /// Settles the early unpacks once the manifests are read, before any layer is stored.
    /// `uses` counts, by spooled path, the chain IDs each layer file is stored under. What a
    /// file no manifest names was unpacked into is deleted (its space may be needed by the
    /// layers to come). The spooled file of a layer unpacked early is deleted too, but when it
    /// is used more than once (it is unpacked again for the other chain IDs): it is not read
    /// again, and deleting it before the first layer's `syncfs` spares writing it to disk.
    pub fn settle_unpacked(&self, uses: &HashMap<&Path, usize>) {
        let Ok(mut unpacked) = self.unpacked.lock() else { return };
        unpacked.retain(|path, r| match (uses.get(path.as_path()), r) {
            (None, Ok(early)) => {
                if let Err(e) = crate::util::remove_dir_all_idempotent(&early.dir) {
                    tracing::warn!(path = %early.dir.display(), "removing an unused early unpack: {e}");
                }
                false
            }
            (None, Err(_)) => false,
            (Some(&n), Ok(_)) => {
                if n == 1 {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!(path = %path.display(), "removing a spooled layer file: {e}");
                    }
                }
                true
            }
            (Some(_), Err(_)) => true,
        });
    }

    /// The spool directory (exists until the archive is dropped).
    pub fn spool_dir(&self) -> &Path {
        &self.spool.dir
    }
}

#[derive(Debug, Clone)]
struct SpoolFile {
    path: PathBuf,
    /// Measured while spooling when the entry's name carries a digest; else see [`Spool::digest`].
    digest: Option<String>,
    size: u64,
}

/// Spooled regular files by normalized entry name, and links (symlink or hardlink) to them.
#[derive(Debug)]
struct Spool {
    dir: PathBuf,
    source: String,
    files: HashMap<String, SpoolFile>,
    links: HashMap<String, String>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = crate::util::remove_dir_all_idempotent(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "removing the import spool: {e}");
        }
    }
}

fn archive_err(source: &str, message: impl Into<String>) -> ImageError {
    ImageError::Archive { archive: source.to_string(), message: message.into() }
}

/// Normalizes an entry name: strips a leading `/` and `./`, refuses `..`. Returns `a/b/c`.
fn normalize(name: &Path) -> Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_str().ok_or("the name is not UTF-8")?),
            Component::ParentDir => return Err("the name has a '..' component".into()),
            Component::Prefix(_) => return Err("the name has a prefix".into()),
        }
    }
    Ok(parts.join("/"))
}

/// Resolves the link target `target` of entry `entry` lexically inside the archive (absolute
/// targets from the archive root); `None` when it climbs above the root.
fn link_target(entry: &str, target: &Path, symlink: bool) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if symlink && !target.is_absolute() {
        parts = entry.split('/').map(str::to_string).collect();
        parts.pop();
    }
    for c in target.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

impl Spool {
    fn create(dir: PathBuf, source: &str) -> Result<Spool, ImageError> {
        std::fs::create_dir(&dir).map_err(|e| ImageError::io(&dir, e))?;
        Ok(Spool { dir, source: source.to_string(), files: HashMap::new(), links: HashMap::new() })
    }

    /// Reads the whole (outer) tar, spooling regular files and noting links; each file that
    /// may be a layer ([`early::may_be_layer`]) goes to `unpack` once spooled. Blocking.
    fn fill<R: Read>(&mut self, reader: R, unpack: &mut dyn FnMut(early::Job)) -> Result<(), ImageError> {
        let source = self.source.clone();
        let err = |m: String| archive_err(&source, m);
        let mut reader = reader;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match reader.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(format!("reading: {e}"))),
            }
        }
        if got == 0 {
            return Err(err("the archive is empty (expected a tar, gzip'd or not)".into()));
        }
        let whole = io::Cursor::new(magic[..got].to_vec()).chain(reader);
        let compression = detect_compression(&magic[..got]);
        let kind = match compression {
            Compression::None => "tar",
            Compression::Gzip => "gzip'd tar",
            Compression::Zstd => "zstd tar",
        };
        let mut decoded: Box<dyn Read> = match compression {
            Compression::None => Box::new(whole),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole).map_err(|e| err(format!("zstd: {e}")))?),
        };
        {
            let mut tar = tar::Archive::new(&mut decoded);
            let entries = tar.entries().map_err(|e| err(format!("reading the {kind}: {e}")))?;
            for (n, entry) in entries.enumerate() {
                let mut entry = entry.map_err(|e| err(format!("reading the {kind} (is it a tar archive?): {e}")))?;
                let raw = entry.path().map_err(|e| err(format!("entry {n}: {e}")))?.into_owned();
                let name = normalize(&raw).map_err(|m| err(format!("entry {:?}: {m}", raw.display())))?;
                let etype = entry.header().entry_type();
                match etype {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let path = self.dir.join(format!("{n}"));
                        let f = std::fs::File::create(&path).map_err(|e| ImageError::io(&path, e))?;
                        let spool_err = |e: io::Error| err(format!("entry {name:?}: spooling to {}: {e}", path.display()));
                        let may_be_layer = early::may_be_layer(&name);
                        let (digest, size) = if may_be_layer || digest_in_name(&name).is_some() {
                            let mut w = Hashing::new(BufWriter::with_capacity(1 << 16, f));
                            io::copy(&mut entry, &mut w).map_err(spool_err)?;
                            w.flush().map_err(|e| ImageError::io(&path, e))?;
                            let (digest, size) = w.finish();
                            (Some(digest), size)
                        } else {
                            let mut w = BufWriter::with_capacity(1 << 16, f);
                            let size = io::copy(&mut entry, &mut w).map_err(spool_err)?;
                            w.flush().map_err(|e| ImageError::io(&path, e))?;
                            (None, size)
                        };
                        self.links.remove(&name);
                        if let (true, Some(d)) = (may_be_layer, &digest) {
                            let dir = self.dir.join(format!("u{n}"));
                            unpack(early::Job { path: path.clone(), digest: d.clone(), entry: name.clone(), dir });
                        }
                        self.files.insert(name, SpoolFile { path, digest, size });
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
                        let Some(resolved) = link_target(&name, &target, etype == tar::EntryType::Symlink) else {
                            return Err(err(format!("entry {name:?}: link target {:?} leaves the archive", target.display())));
                        };
                        self.files.remove(&name);
                        self.links.insert(name, resolved);
                    }
                    _ => {}
                }
            }
        }
        // Trailing blocks and padding: read to the end so a streaming sender is not cut off.
        io::copy(&mut decoded, &mut io::sink()).map_err(|e| err(format!("reading the end of the archive: {e}")))?;
        Ok(())
    }

    /// The spooled file `name` (links followed, at most 40).
    fn get(&self, name: &str) -> Option<&SpoolFile> {
        let mut name = normalize(Path::new(name)).ok()?;
        for _ in 0..40 {
            if let Some(f) = self.files.get(&name) {
                return Some(f);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// `sha256:<hex>` of a spooled file: measured while spooling, or now (read back from the
    /// spool) for a file whose name carried no digest.
    fn digest(&self, f: &SpoolFile) -> Result<String, ImageError> {
        if let Some(d) = &f.digest {
            return Ok(d.clone());
        }
        let file = std::fs::File::open(&f.path).map_err(|e| ImageError::io(&f.path, e))?;
        let mut r = Hashing::new(io::BufReader::with_capacity(1 << 16, file));
        io::copy(&mut r, &mut io::sink()).map_err(|e| ImageError::io(&f.path, e))?;
        Ok(r.finish().0)
    }

    /// Reads a JSON document of the archive into memory (at most [`MAX_JSON`] bytes).
    fn read_small(&self, name: &str, f: &SpoolFile) -> Result<Vec<u8>, ImageError> {
        if f.size > MAX_JSON {
            return Err(archive_err(&self.source, format!("{name}: {} bytes, more than the {MAX_JSON} a JSON document may have", f.size)));
        }
        std::fs::read(&f.path).map_err(|e| ImageError::io(&f.path, e))
    }

    /// The blob `blobs/sha256/<hex>` for `desc`, checked against its digest and size.
    fn blob(&self, image: &str, desc: &Descriptor, what: &str) -> Result<(String, SpoolFile), ImageError> {
        let hex = desc.digest.strip_prefix("sha256:").filter(|h| is_hex64(h)).ok_or_else(|| {
            archive_err(&self.source, format!("image {image}: {what} digest {:?}: expected sha256:<64 hex>", desc.digest))
        })?;
        let name = format!("blobs/sha256/{hex}");
        let f = self.get(&name).ok_or_else(|| {
            archive_err(&self.source, format!("image {image}: {what} {name} ({}) is not in the archive", desc.media_type))
        })?;
        let actual = self.digest(f)?;
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                image: image.to_string(),
                what: format!("archive {}: {what} {name}", self.source),
                expected: desc.digest.clone(),
                actual,
            });
        }
        if desc.size >= 0 && desc.size as u64 != f.size {
            return Err(archive_err(
                &self.source,
                format!("image {image}: {what} {name}: {} bytes, the descriptor says {}", f.size, desc.size),
            ));
        }
        Ok((name, SpoolFile { digest: Some(actual), ..f.clone() }))
    }
}

/// Reads the archive `reader` (plain, gzip or zstd tar): spools its files into `spool_dir`
/// (created here; it must not exist) and returns its images. `source` names the archive in
/// errors (a path, `-`, `request body`). Layer files are unpacked meanwhile, but those whose
/// digest is `known` to the store ([`super::early`]). Blocking: call from `spawn_blocking`.
///
/// Errors: [`ImageError::Archive`] naming the archive and the entry for an unreadable tar, a
/// hostile entry name (`..`, a link leaving the archive), a missing or non-JSON
/// `manifest.json` / `index.json` / `oci-layout`, a missing blob, or no image for this
/// platform; [`ImageError::DigestMismatch`] for a blob whose content does not match its name;
/// [`ImageError::Io`] when the spool cannot be written. The spool is removed on every error.
pub fn read_archive<R: Read>(reader: R, spool_dir: PathBuf, source: &str, known: &early::Known<'_>) -> Result<Archive, ImageError> {
    let mut spool = Spool::create(spool_dir, source)?;
    let (filled, unpacked) = early::with_unpackers(source, known, |unpack| spool.fill(reader, unpack));
    filled?;
    let images = if spool.has("manifest.json") {
        docker_images(&spool)?
    } else if spool.has("index.json") || spool.has("oci-layout") {
        oci_images(&spool)?
    } else {
        return Err(archive_err(
            source,
            format!(
                "unknown layout: expected manifest.json (docker-archive) or oci-layout and index.json (OCI image layout) among its {} files",
                spool.files.len()
            ),
        ));
    };
    let mut merged: Vec<ArchiveImage> = Vec::new();
    for img in images {
        match merged.iter_mut().find(|m| m.id == img.id) {
            Some(m) => {
                for n in img.names {
                    if !m.names.contains(&n) {
                        m.names.push(n);
                    }
                }
            }
            None => merged.push(img),
        }
    }
    Ok(Archive { images: merged, unpacked: std::sync::Mutex::new(unpacked), spool })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The hex digest a docker-archive file name carries: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_in_name(name: &str) -> Option<String> {
    let n = name.trim_start_matches("./");
    let hex = n.strip_prefix("blobs/sha256/").or_else(|| n.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    is_hex64(hex).then(|| format!("sha256:{hex}"))
}

fn docker_images(spool: &Spool) -> Result<Vec<ArchiveImage>, ImageError> {
    let src = &spool.source;
    let mf = spool.get("manifest.json").ok_or_else(|| archive_err(src, "manifest.json is missing"))?;
    let bytes = spool.read_small("manifest.json", mf)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        archive_err(
            src,
            format!("manifest.json: not a docker-archive manifest (expected a JSON array of {{Config, RepoTags, Layers}}): {e}"),
        )
    })?;
    if entries.is_empty() {
        return Err(archive_err(src, "manifest.json lists no image"));
    }
    let mut out = Vec::new();
    for e in entries {
        let names = e.repo_tags.unwrap_or_default();
        let image = names.first().cloned().unwrap_or_else(|| e.config.clone());
        // The digest an entry's name carries, checked; None when the name carries none.
        let check = |entry: &str, f: &SpoolFile, what: &str| -> Result<Option<String>, ImageError> {
            let Some(want) = digest_in_name(entry) else { return Ok(None) };
            let actual = spool.digest(f)?;
            if want != actual {
                return Err(ImageError::DigestMismatch {
                    image: image.clone(),
                    what: format!("archive {src}: {what} {entry}"),
                    expected: want,
                    actual,
                });
            }
            Ok(Some(actual))
        };
        let cf = spool
            .get(&e.config)
            .ok_or_else(|| archive_err(src, format!("manifest.json: image {image}: config {} is not in the archive", e.config)))?;
        let id = match check(&e.config, cf, "config")? {
            Some(d) => d,
            None => spool.digest(cf)?,
        };
        let config = spool.read_small(&e.config, cf)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let f =
                spool.get(l).ok_or_else(|| archive_err(src, format!("manifest.json: image {image}: layer {l} is not in the archive")))?;
            let digest = check(l, f, "layer")?;
            layers.push(ArchiveLayer { entry: l.clone(), path: f.path.clone(), digest, size: f.size });
        }
        out.push(ArchiveImage { id, config, config_entry: e.config.clone(), names, layers, media_type: DOCKER_MANIFEST.to_string() });
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default = "unknown_size")]
    size: i64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

fn unknown_size() -> i64 {
    -1
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layout {
    image_layout_version: String,
}

/// This machine's platform as OCI spells it (`linux`, GOARCH names: amd64, arm64, ...).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    ("linux", arch)
}

fn is_host(p: &Platform) -> bool {
    let (os, arch) = host_platform();
    p.os == os && p.architecture == arch
}

/// The names of an index entry: `io.containerd.image.name`, then
/// `org.opencontainers.image.ref.name` when it is a full reference (has a `/` or `:`).
fn oci_names(desc: &Descriptor) -> Vec<String> {
    let mut out = Vec::new();
    let Some(a) = &desc.annotations else { return out };
    if let Some(n) = a.get("io.containerd.image.name").filter(|n| !n.is_empty()) {
        out.push(n.clone());
    }
    if let Some(n) = a.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/') || n.contains(':')) {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

fn parse_json<T: serde::de::DeserializeOwned>(spool: &Spool, name: &str, bytes: &[u8], expected: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| archive_err(&spool.source, format!("{name}: not {expected}: {e}")))
}

fn oci_images(spool: &Spool) -> Result<Vec<ArchiveImage>, ImageError> {
    let src = &spool.source;
    let lf = spool.get("oci-layout").ok_or_else(|| archive_err(src, "index.json without oci-layout: not an OCI image layout"))?;
    let layout: Layout =
        parse_json(spool, "oci-layout", &spool.read_small("oci-layout", lf)?, "an oci-layout file ({\"imageLayoutVersion\": \"1.0.0\"})")?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(archive_err(src, format!("oci-layout: imageLayoutVersion {:?}, expected 1.x", layout.image_layout_version)));
    }
    let xf = spool.get("index.json").ok_or_else(|| archive_err(src, "oci-layout without index.json: not an OCI image layout"))?;
    let index: Index = parse_json(spool, "index.json", &spool.read_small("index.json", xf)?, "an OCI image index")?;
    let (os, arch) = host_platform();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for top in &index.manifests {
        let names = oci_names(top);
        let image = names.first().cloned().unwrap_or_else(|| top.digest.clone());
        if top.platform.as_ref().is_some_and(|p| !is_host(p)) {
            skipped.push(format!("{} for another platform", top.digest));
            continue;
        }
        let desc = match top.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let (name, f) = spool.blob(&image, top, "image index")?;
                let nested: Index = parse_json(spool, &name, &spool.read_small(&name, &f)?, "an OCI image index")?;
                let found = nested
                    .manifests
                    .into_iter()
                    .find(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) && d.platform.as_ref().is_some_and(is_host));
                found.ok_or_else(|| archive_err(src, format!("image {image}: image index {name} has no manifest for {os}/{arch}")))?
            }
            OCI_MANIFEST | DOCKER_MANIFEST => Descriptor {
                media_type: top.media_type.clone(),
                digest: top.digest.clone(),
                size: top.size,
                annotations: None,
                platform: None,
            },
            other => {
                skipped.push(format!("{} of media type {other:?}", top.digest));
                continue;
            }
        };
        let (name, f) = spool.blob(&image, &desc, "image manifest")?;
        let m: Manifest = parse_json(spool, &name, &spool.read_small(&name, &f)?, "an OCI image manifest")?;
        let (config_entry, cf) = spool.blob(&image, &m.config, "config")?;
        let config = spool.read_small(&config_entry, &cf)?;
        let id = spool.digest(&cf)?;
        let mut layers = Vec::new();
        for l in &m.layers {
            let (entry, f) = spool.blob(&image, l, "layer")?;
            layers.push(ArchiveLayer { entry, path: f.path, digest: f.digest, size: f.size });
        }
        out.push(ArchiveImage { id, config, config_entry, names, layers, media_type: m.media_type.unwrap_or(desc.media_type) });
    }
    if out.is_empty() {
        return Err(archive_err(src, format!("index.json: no image for {os}/{arch} (skipped: {})", skipped.join(", "))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_dotdot_refused() {
        assert_eq!(normalize(Path::new("./blobs/sha256/ab")).unwrap(), "blobs/sha256/ab");
        assert_eq!(normalize(Path::new("/manifest.json")).unwrap(), "manifest.json");
        assert!(normalize(Path::new("a/../../etc/passwd")).is_err());
        assert_eq!(link_target("x/layer.tar", Path::new("../y/layer.tar"), true).as_deref(), Some("y/layer.tar"));
        assert_eq!(link_target("x/layer.tar", Path::new("y/layer.tar"), false).as_deref(), Some("y/layer.tar"));
        assert_eq!(link_target("layer.tar", Path::new("../../etc"), true), None);
    }

    #[test]
    fn digests_in_docker_names() {
        let hex = "a".repeat(64);
        assert_eq!(digest_in_name(&format!("blobs/sha256/{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(format!("sha256:{hex}")));
        assert_eq!(digest_in_name(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_name("config.json"), None);
    }

    #[test]
    fn oci_names_prefer_full_references() {
        let d: Descriptor = serde_json::from_str(
            r#"{"mediaType":"x","digest":"sha256:0","size":1,"annotations":{"org.opencontainers.image.ref.name":"latest","io.containerd.image.name":"docker.io/library/a:latest"}}"#,
        )
        .unwrap();
        assert_eq!(oci_names(&d), vec!["docker.io/library/a:latest"]);
        let d: Descriptor =
            serde_json::from_str(r#"{"mediaType":"x","digest":"sha256:0","annotations":{"org.opencontainers.image.ref.name":"b:1"}}"#)
                .unwrap();
        assert_eq!(oci_names(&d), vec!["b:1"]);
        assert_eq!(d.size, -1);
    }
}
