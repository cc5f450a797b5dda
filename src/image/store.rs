//! [`ImageStore`]: pulled images and their unpacked layers.
//!
//! On disk, under `<root>/images`:
//! - `layers/<chain-id hex>/diff`: one directory per layer, shared by every image whose layer
//!   stack has that chain ID (image-spec config.md "Layer ChainID"). A layer is unpacked into
//!   `layers/<hex>.tmp-<rand>/diff` (a pulled one as it downloads, up to three layers at once,
//!   the blob never written), made durable with one `syncfs(2)`, renamed into place, then
//!   recorded in the metadata table `layers`; a directory without its record is garbage and is
//!   deleted on open.
//! - `configs/<hex>`: the image config blob of each image, byte for byte as pulled or imported
//!   (`sha256:<hex>` is the image ID), written before the image record (tmp file, rename) and
//!   removed with it; one without a record is deleted on open. Images pulled before configs were
//!   kept have none ([`ImageStore::config_blob`] answers `None`).
//! - `tmp/`: archives being imported, config files being written; emptied on open.
//!
//! Image records live in the metadata table `images`, keyed by image ID
//! (`sha256:<config digest>`), as JSON [`Image`].
//!
//! Locking: a per-chain-ID async mutex serializes unpacking of one layer; pulls hold the GC lock
//! shared from the first layer until the image record is written, and removal (which deletes
//! unused layers) holds it exclusively, so a layer is never deleted under a pull that is about
//! to reference it. Record edits (tags moving between images) are serialized by a second mutex,
//! always taken after the GC lock.

use super::reference::{is_hex, is_hex64, is_sha256_digest, ImageReference};
use super::registry::{Puller, RegistryAuth, Session, Source};
use super::types::ImageRuntimeConfig;
use super::unpack::{unpack_blob_file, unpack_reader};
use super::ImageError;
use crate::config::ImageConfig;
use crate::state::{Store, IMAGES, LAYERS, LEASES};
use crate::util::{new_id, now_nanos, remove_dir_all_idempotent};
use futures_util::StreamExt;
use oci_client::secrets::RegistryAuth as OciAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// An image record (table `images`, keyed by `id`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Image {
    /// `sha256:<hex>` digest of the image config blob (what CRI calls the image ID).
    pub id: String,
    /// Normalized `registry/repository:tag` names, e.g. `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:<manifest or index digest>`.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes in bytes (what containerd reports).
    pub size: u64,
    /// The config fields container creation uses.
    pub config: ImageRuntimeConfig,
    /// Chain IDs of the layers, base layer first.
    pub chain_ids: Vec<String>,
    /// Media type of the platform manifest (OCI or docker schema2).
    pub media_type: String,
    /// When the image was first pulled, nanoseconds since the epoch.
    pub created_at: i64,
}

/// A layer record (table `layers`, keyed by chain ID).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LayerRecord {
    /// `sha256:<hex>` chain ID.
    pub chain_id: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:<hex>` of the blob it was unpacked from.
    pub digest: String,
    /// Blob size in bytes.
    pub compressed_size: u64,
    /// Uncompressed tar size in bytes.
    pub uncompressed_size: u64,
    /// When it was unpacked, nanoseconds since the epoch.
    pub created_at: i64,
}

/// Disk usage of the image store, for CRI ImageFsInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The image store directory.
    pub mountpoint: PathBuf,
    /// Bytes of disk used by unpacked layers (allocated blocks, hardlinks counted once).
    pub used_bytes: u64,
    /// Inodes used by unpacked layers.
    pub inodes_used: u64,
}

/// The parts of an image config file this store reads (image-spec config.md); docker's
/// `null`s are accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ConfigFile {
    pub(super) config: Option<ContainerConfig>,
    pub(super) rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(super) struct ContainerConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RootFs {
    pub(super) diff_ids: Vec<String>,
}

impl From<ContainerConfig> for ImageRuntimeConfig {
    fn from(c: ContainerConfig) -> Self {
        ImageRuntimeConfig {
            user: c.user.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
        }
    }
}

/// Chain IDs for `diff_ids` (base first): ChainID(L0) = DiffID(L0),
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)) (image-spec config.md).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

/// Unpacks the blob file `blob` into `diff` on a blocking thread ([`unpack_blob_file`]);
/// `layer` names it in errors.
pub(super) async fn unpack_file(blob: PathBuf, diff: PathBuf, layer: String) -> Result<super::unpack::UnpackedLayer, ImageError> {
    let name = layer.clone();
    tokio::task::spawn_blocking(move || unpack_blob_file(&blob, &diff, &layer)).await.map_err(|e| ImageError::Unpack {
        layer: name,
        entry: String::new(),
        message: format!("unpack task failed: {e}"),
    })?
}

/// Layers of one pull fetched and unpacked at once (containerd's default
/// `max_concurrent_downloads`).
const LAYER_DOWNLOADS: usize = 3;

/// Makes an unpacked layer durable before it is renamed into place and recorded: one
/// `syncfs(2)` of the filesystem holding `dir`, instead of an fsync per file (a crash after the
/// record is written then never finds a layer with files missing or empty).
async fn sync_layer(dir: &std::path::Path) -> Result<(), ImageError> {
    let d = dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&d)?;
        nix::unistd::syncfs(&f).map_err(std::io::Error::from)
    })
    .await;
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ImageError::io(dir, e)),
        Err(e) => Err(ImageError::Io { path: dir.to_path_buf(), message: format!("syncfs task failed: {e}") }),
    }
}

/// Checks what unpacking measured against the expected blob digest (when known) and the
/// config's diff ID, and makes the layer record. `image` and `layer` name them in errors.
pub(super) fn layer_record(
    image: &str,
    layer: &str,
    unpacked: super::unpack::UnpackedLayer,
    digest: Option<&str>,
    diff_id: &str,
    chain_id: &str,
) -> Result<LayerRecord, ImageError> {
    if let Some(d) = digest.filter(|d| *d != unpacked.digest) {
        return Err(ImageError::DigestMismatch {
            image: image.to_string(),
            what: format!("{layer} blob"),
            expected: d.to_string(),
            actual: unpacked.digest,
        });
    }
    if unpacked.diff_id != diff_id {
        return Err(ImageError::DigestMismatch {
            image: image.to_string(),
            what: format!("{layer} uncompressed content vs config rootfs.diff_ids"),
            expected: diff_id.to_string(),
            actual: unpacked.diff_id,
        });
    }
    Ok(LayerRecord {
        chain_id: chain_id.to_string(),
        diff_id: unpacked.diff_id,
        digest: unpacked.digest,
        compressed_size: unpacked.compressed_size,
        uncompressed_size: unpacked.uncompressed_size,
        created_at: now_nanos(),
    })
}

/// Pulled images and their layers. Share it behind an `Arc`.
pub struct ImageStore {
    pub(super) dir: PathBuf,
    pub(super) store: Arc<Store>,
    puller: Puller,
    layer_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) gc: tokio::sync::RwLock<()>,
    pub(super) meta: tokio::sync::Mutex<()>,
}

pub(super) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl ImageStore {
    /// Opens the store at `dir` (`<root>/images`), creating `layers/`, `configs/` and `tmp/`,
    /// emptying `tmp/` and deleting half-unpacked layers, layer directories without a record and
    /// config blobs without an image.
    pub fn open(dir: PathBuf, store: Arc<Store>, cfg: ImageConfig) -> Result<ImageStore, ImageError> {
        let layers = dir.join("layers");
        let configs = dir.join("configs");
        let tmp = dir.join("tmp");
        remove_dir_all_idempotent(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        for d in [&layers, &configs, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
        }
        let images: HashSet<String> = store.list::<Image>(IMAGES)?.into_iter().map(|(k, _)| hex_of(&k).to_string()).collect();
        for entry in std::fs::read_dir(&configs).map_err(|e| ImageError::io(&configs, e))? {
            let entry = entry.map_err(|e| ImageError::io(&configs, e))?;
            if !images.contains(entry.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_file(entry.path()).map_err(|e| ImageError::io(entry.path(), e))?;
            }
        }
        let known: HashSet<String> = store.list::<LayerRecord>(LAYERS)?.into_iter().map(|(k, _)| hex_of(&k).to_string()).collect();
        for entry in std::fs::read_dir(&layers).map_err(|e| ImageError::io(&layers, e))? {
            let entry = entry.map_err(|e| ImageError::io(&layers, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(layer_dir = %entry.path().display(), "removing unrecorded layer directory");
                remove_dir_all_idempotent(&entry.path()).map_err(|e| ImageError::io(entry.path(), e))?;
            }
        }
        Ok(ImageStore {
            dir,
            store,
            puller: Puller::new(cfg),
            layer_locks: std::sync::Mutex::new(HashMap::new()),
            gc: tokio::sync::RwLock::new(()),
            meta: tokio::sync::Mutex::new(()),
        })
    }

    /// The diff directory of a layer: `<dir>/layers/<chain-id hex>/diff`.
    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.dir.join("layers").join(hex_of(chain_id)).join("diff")
    }

    /// Pulls `reference` (see [`super::registry`] for sources, auth and platform), unpacks the
    /// layers it lacks and records the image under the name as given (normalized) with its
    /// repo digest. A tag held by another image moves to this one.
    ///
    /// Errors: [`ImageError::InvalidReference`], the registry errors of every source tried (the
    /// last one is returned), [`ImageError::DigestMismatch`] / [`ImageError::BadConfig`] for
    /// inconsistent content, [`ImageError::Unpack`] for hostile or unreadable layers.
    pub async fn pull(&self, reference: &str, auth: Option<RegistryAuth>) -> Result<Image, ImageError> {
        let pulled = self.pull_any_source(reference, auth).await;
        // The streams' buffers are free now: give them back (see crate::heap).
        crate::heap::release_free_memory();
        pulled
    }

    /// [`ImageStore::pull`] but for the memory release: each source in turn.
    async fn pull_any_source(&self, reference: &str, auth: Option<RegistryAuth>) -> Result<Image, ImageError> {
        let r = ImageReference::parse(reference)?;
        let auth = match auth {
            None => OciAuth::Anonymous,
            Some(a) => {
                a.to_oci().map_err(|message| ImageError::Unauthenticated { image: r.to_string(), registry: r.registry.clone(), message })?
            }
        };
        let started = std::time::Instant::now();
        let mut last = None;
        for src in self.puller.sources(&r) {
            let session = self.puller.session(if src.mirror { &OciAuth::Anonymous } else { &auth });
            match self.pull_from(&r, &src, &session).await {
                Ok(image) => {
                    tracing::debug!(image = %r, source = %src.host, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
                    crate::metrics::global().observe_pull(started.elapsed().as_secs_f64());
                    return Ok(image);
                }
                Err(e) => {
                    tracing::warn!(image = %r, source = %src.host, "pull failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Registry {
            image: r.to_string(),
            registry: r.registry.clone(),
            message: "no registry or mirror to pull from".into(),
        }))
    }

    async fn pull_from(&self, r: &ImageReference, src: &Source, session: &Session) -> Result<Image, ImageError> {
        let image_name = r.to_string();
        let resolved = session.resolve(src, r).await?;
        let m = &resolved.manifest;
        let id = m.config.digest.clone();
        if !is_sha256_digest(&id) {
            return Err(ImageError::BadConfig { image: image_name, message: format!("config digest {id:?} is not sha256:<64 hex>") });
        }
        let config_bytes = session.blob_to_vec(src, r, &m.config).await?;
        let cfg: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::BadConfig { image: image_name.clone(), message: format!("not an image config: {e}") })?;
        let diff_ids = cfg.rootfs.diff_ids;
        if diff_ids.len() != m.layers.len() {
            return Err(ImageError::BadConfig {
                image: image_name,
                message: format!("rootfs.diff_ids has {} entries but the manifest has {} layers", diff_ids.len(), m.layers.len()),
            });
        }
        if let Some(bad) = diff_ids.iter().find(|d| !is_sha256_digest(d)) {
            return Err(ImageError::BadConfig {
                image: image_name,
                message: format!("rootfs.diff_ids entry {bad:?} is not sha256:<64 hex>"),
            });
        }
        let chains = chain_ids(&diff_ids);
        let _gc = self.gc.read().await;
        let name = image_name.as_str();
        // Up to LAYER_DOWNLOADS layers at once, each unpacked into its own directory as it
        // downloads. Every layer's future runs to its end (no early exit on the first error),
        // so no unpack is left running into a directory nobody will clean up.
        let mut layers = Vec::with_capacity(m.layers.len());
        for ((desc, diff_id), chain_id) in m.layers.iter().zip(&diff_ids).zip(&chains) {
            layers.push(async move {
                let unpack = |tmp_dir: PathBuf, _blob: PathBuf| async move {
                    let diff = tmp_dir.join("diff");
                    std::fs::create_dir_all(&diff).map_err(|e| ImageError::io(&diff, e))?;
                    let layer = desc.digest.clone();
                    let unpacked = session.stream_blob(src, r, desc, move |blob| unpack_reader(blob, &diff, &layer)).await?;
                    layer_record(name, &format!("layer {}", desc.digest), unpacked, Some(&desc.digest), diff_id, chain_id)
                };
                if self.ensure_layer(chain_id, unpack).await? {
                    crate::metrics::global().image_pull_bytes.add(desc.size.max(0) as u64);
                }
                Ok::<(), ImageError>(())
            });
        }
        let results: Vec<Result<(), ImageError>> = futures_util::stream::iter(layers).buffered(LAYER_DOWNLOADS).collect().await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let _meta = self.meta.lock().await;
        self.put_config(&image_name, &id, &config_bytes)?;
        let mut image = self.store.get::<Image>(IMAGES, &id)?.unwrap_or_else(|| Image {
            id: id.clone(),
            created_at: now_nanos(),
            ..Default::default()
        });
        image.config = cfg.config.map(ImageRuntimeConfig::from).unwrap_or_default();
        image.chain_ids = chains;
        image.media_type = resolved.media_type.clone();
        image.size = m.layers.iter().map(|l| l.size.max(0) as u64).sum();
        let digest_ref = r.with_digest(&resolved.repo_digest);
        if !image.repo_digests.contains(&digest_ref) {
            image.repo_digests.push(digest_ref);
        }
        // `name:tag@digest` pulls the digest and names the image by it only: the tag is not
        // moved here (it may name other content in the registry), as containerd and docker
        // drop the tag of a digested reference.
        if let Some(tag) = r.tagged().filter(|_| r.digest.is_none()) {
            self.move_tag(&mut image, tag)?;
        }
        self.store.put(IMAGES, &id, &image)?;
        Ok(image)
    }

    /// Gives `image` the tag `tag`, taking it from any other image that has it (the other
    /// record is written; `image` is not). Caller holds the meta lock.
    pub(super) fn move_tag(&self, image: &mut Image, tag: String) -> Result<(), ImageError> {
        for (other_id, mut other) in self.store.list::<Image>(IMAGES)? {
            if other_id != image.id && other.repo_tags.contains(&tag) {
                other.repo_tags.retain(|t| t != &tag);
                self.store.put(IMAGES, &other_id, &other)?;
            }
        }
        if !image.repo_tags.contains(&tag) {
            image.repo_tags.push(tag);
        }
        Ok(())
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.dir.join("configs").join(hex_of(id))
    }

    /// Keeps the config blob of image `id` (`sha256:<hex>` of `bytes`, checked) at
    /// `configs/<hex>`: written to a tmp file, synced, renamed into place. `image` names the
    /// image in errors.
    pub(super) fn put_config(&self, image: &str, id: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if actual != id {
            return Err(ImageError::DigestMismatch {
                image: image.to_string(),
                what: "image config".into(),
                expected: id.to_string(),
                actual,
            });
        }
        let path = self.config_path(id);
        if path.is_file() {
            return Ok(());
        }
        let tmp = self.dir.join("tmp").join(format!("config-{}", &new_id()[..12]));
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::io(&path, e));
        }
        Ok(())
    }

    /// The image config blob of image `id` (`sha256:<hex>`), byte for byte as pulled or
    /// imported, verified against the ID; `Ok(None)` when the store has none (an image pulled
    /// before configs were kept, or no such image).
    ///
    /// Errors: [`ImageError::Io`] when it cannot be read, [`ImageError::DigestMismatch`] when
    /// its content is not what the ID says.
    pub fn config_blob(&self, id: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.config_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(&path, e)),
        };
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != id {
            return Err(ImageError::DigestMismatch {
                image: id.to_string(),
                what: format!("config blob {}", path.display()),
                expected: id.to_string(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    fn layer_ready(&self, chain_id: &str) -> Result<bool, ImageError> {
        Ok(self.store.get::<LayerRecord>(LAYERS, chain_id)?.is_some() && self.layer_dir(chain_id).is_dir())
    }

    fn layer_lock(&self, chain_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(chain_id.to_string()).or_default().clone()
    }

    /// Makes sure the layer `chain_id` is unpacked: if it is not, `unpack(tmp_dir, blob)` fills
    /// `tmp_dir/diff` (`blob` is a free path under `tmp/` it may use, removed afterwards) and
    /// returns the record; the directory is renamed into place and recorded. Returns whether it
    /// was unpacked here (false: it was already there). On error nothing of it is left.
    pub(super) async fn ensure_layer<F, Fut>(&self, chain_id: &str, unpack: F) -> Result<bool, ImageError>
    where
        F: FnOnce(PathBuf, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<LayerRecord, ImageError>>,
    {
        if self.layer_ready(chain_id)? {
            return Ok(false);
        }
        let lock = self.layer_lock(chain_id);
        let _guard = lock.lock().await;
        if self.layer_ready(chain_id)? {
            return Ok(false);
        }
        let final_dir = self.dir.join("layers").join(hex_of(chain_id));
        remove_dir_all_idempotent(&final_dir).map_err(|e| ImageError::io(&final_dir, e))?;
        let rand = &new_id()[..12];
        let tmp_dir = self.dir.join("layers").join(format!("{}.tmp-{rand}", hex_of(chain_id)));
        let blob = self.dir.join("tmp").join(format!("blob-{rand}"));
        let result = unpack(tmp_dir.clone(), blob.clone()).await;
        let _ = std::fs::remove_file(&blob);
        let record = match result {
            Ok(rec) => sync_layer(&tmp_dir).await.map(|()| rec),
            Err(e) => Err(e),
        };
        let record = match record {
            Ok(rec) => rec,
            Err(e) => {
                let _ = remove_dir_all_idempotent(&tmp_dir);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp_dir, &final_dir) {
            let _ = remove_dir_all_idempotent(&tmp_dir);
            return Err(ImageError::io(&final_dir, e));
        }
        self.store.put(LAYERS, chain_id, &record)?;
        Ok(true)
    }

    /// Every image record.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.store.list::<Image>(IMAGES)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Finds an image by: full ID `sha256:<hex>`, bare 64-hex ID, normalized tag
    /// (`busybox` = `docker.io/library/busybox:latest`), repo digest `name@sha256:...` (a tag next
    /// to a digest is ignored, as containerd does), or a unique ID prefix of at least 12 hex
    /// characters (with or without `sha256:`). `Ok(None)` when nothing matches or a prefix is
    /// ambiguous; [`ImageError::InvalidReference`] when `reference` is none of these shapes.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let images = self.list()?;
        let by_id = |id: &str| images.iter().find(|i| i.id == id).cloned();
        if is_sha256_digest(reference) {
            return Ok(by_id(reference));
        }
        if is_hex64(reference) {
            return Ok(by_id(&format!("sha256:{reference}")));
        }
        let parsed = ImageReference::parse(reference);
        if let Ok(r) = &parsed {
            let found = match &r.digest {
                Some(d) => {
                    let want = r.with_digest(d);
                    images.iter().find(|i| i.repo_digests.contains(&want)).cloned()
                }
                None => r.tagged().and_then(|t| images.iter().find(|i| i.repo_tags.contains(&t)).cloned()),
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 12 && is_hex(prefix) {
            let mut hits = images.iter().filter(|i| hex_of(&i.id).starts_with(prefix));
            return Ok(match (hits.next(), hits.next()) {
                (Some(one), None) => Some(one.clone()),
                _ => None,
            });
        }
        match parsed {
            Ok(_) => Ok(None),
            Err(e) => Err(ImageError::InvalidReference(e)),
        }
    }

    /// Removes `reference`: a tag removes only that tag (the image goes with its last tag); an ID
    /// or digest removes the image with all its names. Nothing found is `Ok`. Layers no image
    /// uses any more are then deleted from disk and the store.
    pub async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _gc = self.gc.write().await;
        let _meta = self.meta.lock().await;
        let Some(mut image) = self.resolve(reference)? else { return Ok(()) };
        let bare = reference.strip_prefix("sha256:").unwrap_or(reference);
        let tag = if is_sha256_digest(reference) || (bare.len() >= 12 && is_hex(bare)) {
            None
        } else {
            ImageReference::parse(reference).ok().filter(|r| r.digest.is_none()).and_then(|r| r.tagged())
        };
        match tag {
            Some(t) if image.repo_tags.contains(&t) && image.repo_tags.len() > 1 => {
                image.repo_tags.retain(|x| x != &t);
                self.store.put(IMAGES, &image.id, &image)?;
            }
            _ => {
                self.store.delete(IMAGES, &image.id)?;
                let config = self.config_path(&image.id);
                if let Err(e) = std::fs::remove_file(&config) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(ImageError::io(&config, e));
                    }
                }
            }
        }
        self.collect_layers(None)
    }

    /// Leases the layers of `image` to `holder` (a container ID) and returns their diff dirs, base
    /// first, as [`ImageStore::layer_dirs`] does. While the lease stands, removing the image
    /// keeps its layers (the container's overlay still stacks them), as containerd's leases do.
    /// Taken under the GC lock, so a concurrent RemoveImage cannot delete the layers between the
    /// lookup and the lease. Errors as `layer_dirs`, or with the store's error.
    pub async fn lease_layers(&self, holder: &str, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        Ok(self.lease_images(holder, &[image]).await?.pop().unwrap_or_default())
    }

    /// [`ImageStore::lease_layers`] for several images under one lease (a container's rootfs
    /// image and the images its image volumes mount): their diff dirs, base first, one list per
    /// image in the order given. One lease per holder, so releasing it frees them all.
    ///
    /// The lease is stored without an fsync of its own ([`crate::state::Store::put_lazy`]): the
    /// caller's next durable commit (CreateContainer's record) makes it durable.
    pub async fn lease_images(&self, holder: &str, images: &[&Image]) -> Result<Vec<Vec<PathBuf>>, ImageError> {
        let _gc = self.gc.write().await;
        let dirs = images.iter().map(|i| self.layer_dirs(i)).collect::<Result<Vec<_>, _>>()?;
        let mut chain_ids: Vec<String> = Vec::new();
        for c in images.iter().flat_map(|i| i.chain_ids.iter()) {
            if !chain_ids.contains(c) {
                chain_ids.push(c.clone());
            }
        }
        // Lazy: within this process the lease holds at once (GC reads the same store). The
        // container record CreateContainer stores next, before the runtime runs, is a durable
        // commit and writes this lease with it; a crash before that leaves no record, and
        // `container::recover` sweeps what the create left (rootfs mount, directories).
        self.store.put_lazy(LEASES, holder, &chain_ids)?;
        Ok(dirs)
    }

    /// The holders (container IDs) of every lease.
    pub fn lease_holders(&self) -> Result<Vec<String>, ImageError> {
        Ok(self.store.list::<Vec<String>>(LEASES)?.into_iter().map(|(h, _)| h).collect())
    }

    /// Drops the lease of `holder` and deletes the layers nothing uses any more. A holder with no
    /// lease is fine (idempotent: undo steps and retried removals call it again).
    pub async fn release_layers(&self, holder: &str) -> Result<(), ImageError> {
        let _gc = self.gc.write().await;
        if self.store.delete(LEASES, holder)? {
            self.collect_layers(None)?;
        }
        Ok(())
    }

    /// Deletes layers that no image and no lease references (only those of `only` when given).
    /// Caller holds the GC lock exclusively.
    pub(super) fn collect_layers(&self, only: Option<&[String]>) -> Result<(), ImageError> {
        let mut used: HashSet<String> = self.list()?.into_iter().flat_map(|i| i.chain_ids).collect();
        for (_, chain_ids) in self.store.list::<Vec<String>>(LEASES)? {
            used.extend(chain_ids);
        }
        for (chain_id, _) in self.store.list::<LayerRecord>(LAYERS)? {
            if used.contains(&chain_id) || only.is_some_and(|o| !o.contains(&chain_id)) {
                continue;
            }
            self.store.delete(LAYERS, &chain_id)?;
            let dir = self.dir.join("layers").join(hex_of(&chain_id));
            remove_dir_all_idempotent(&dir).map_err(|e| ImageError::io(&dir, e))?;
            tracing::debug!(chain_id, "removed unused layer");
        }
        Ok(())
    }

    /// The diff directories of `image`, lowest (base) layer first, for overlay `lowerdir`
    /// (which lists the top layer first: reverse this). Errors with [`ImageError::Io`] naming
    /// a directory that is missing.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image
            .chain_ids
            .iter()
            .map(|c| {
                let d = self.layer_dir(c);
                if d.is_dir() {
                    Ok(d)
                } else {
                    Err(ImageError::io(&d, format!("layer {c} of image {} is not unpacked", image.id)))
                }
            })
            .collect()
    }

    /// Disk usage of the unpacked layers (walks `<dir>/layers`; blocking, run from
    /// `spawn_blocking` when the store is large).
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        use std::os::unix::fs::MetadataExt;
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let (mut used_bytes, mut inodes_used) = (0u64, 0u64);
        let mut stack = vec![self.dir.join("layers")];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io(&d, e)),
            };
            for entry in rd.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                used_bytes += m.blocks() * 512;
                inodes_used += 1;
                if m.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(FsUsage { mountpoint: self.dir.clone(), used_bytes, inodes_used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}").as_bytes())));
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn docker_config_nulls_are_empty() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","config":{"User":"1000","Env":["A=b"],"Entrypoint":null,"Cmd":["sh"],
            "ExposedPorts":{"80/tcp":{}},"Volumes":null,"Labels":null,"StopSignal":"SIGQUIT","WorkingDir":"/w"},
            "rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let rc = ImageRuntimeConfig::from(c.config.unwrap());
        assert_eq!(rc.user, "1000");
        assert_eq!(rc.cmd, vec!["sh"]);
        assert!(rc.entrypoint.is_empty());
        assert_eq!(rc.exposed_ports, vec!["80/tcp"]);
        assert_eq!(rc.stop_signal, "SIGQUIT");
        assert_eq!(rc.working_dir, "/w");
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:x"]);
    }
}
