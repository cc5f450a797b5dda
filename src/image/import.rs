//! [`ImageStore::import`]: loading an image archive (docker-archive or OCI image layout, see
//! [`super::archive`]) into the store with the guarantees of a pull.
//!
//! 1. The archive is read once and spooled to `<root>/images/tmp/import-<rand>/`
//!    ([`super::archive::read_archive`]); manifests, blob digests and every image config
//!    (JSON, `rootfs.diff_ids` as many as the layers) are checked before anything is unpacked.
//!    Each file that may be a layer, and whose digest the store does not know, is unpacked as
//!    soon as it is spooled, three at once, by the pull's own unpack ([`super::early`],
//!    [`super::unpack::unpack_measured_file`]: hostile-entry checks, the DiffID measured on the
//!    way), so unpacking overlaps reading as in a pull.
//! 2. Under the GC lock held shared (as a pull holds it), each layer the store lacks goes in
//!    through [`ImageStore::ensure_layer`] (tmp dir, one syncfs, rename, record), keyed by chain
//!    ID, with its diff ID checked against the config: the early unpack's directory is renamed
//!    in, or the spooled file is unpacked now when it was not unpacked early (or that gave up
//!    past its budget, or failed). A layer already present is not unpacked again (an early
//!    unpack of it is discarded with the spool); what files no manifest names were unpacked
//!    into is deleted before the first layer goes in.
//! 3. Only when every layer of every image of the archive is in are the config blobs and image
//!    records written, tags moving from other images as a pull moves them.
//!
//! On any error nothing of the archive is recorded: layers this import unpacked are deleted
//! again (under the GC lock held exclusively, unless an image or lease took them meanwhile),
//! and the spool is removed. This is stricter than a pull, which keeps the layers it finished.

use super::archive::{read_archive, Archive, ArchiveImage};
use super::early::unpack_name;
use super::reference::ImageReference;
use super::store::{chain_ids, layer_record, unpack_file, ConfigFile, Image, ImageStore, LayerRecord};
use super::types::ImageRuntimeConfig;
use super::ImageError;
use crate::state::{IMAGES, LAYERS};
use crate::util::{new_id, now_nanos};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// Layers of one import unpacked at once (as a pull's `LAYER_DOWNLOADS`).
const IMPORT_UNPACKS: usize = 3;

/// An archive image checked and ready to be stored.
struct Plan {
    name: String,
    tags: Vec<String>,
    diff_ids: Vec<String>,
    chains: Vec<String>,
    config: ImageRuntimeConfig,
}

/// Normalizes the archive's names of `img` to `registry/repository:tag`.
fn tags_of(source: &str, img: &ArchiveImage) -> Result<Vec<String>, ImageError> {
    let mut out: Vec<String> = Vec::new();
    for n in &img.names {
        let r = ImageReference::parse(n).map_err(|e| ImageError::Archive {
            archive: source.to_string(),
            message: format!("image {}: name {n:?} is not an image reference: {e}", img.config_entry),
        })?;
        if r.digest.is_some() {
            return Err(ImageError::Archive {
                archive: source.to_string(),
                message: format!("image {}: name {n:?} has a digest; expected name:tag", img.config_entry),
            });
        }
        if let Some(t) = r.tagged().filter(|t| !out.contains(t)) {
            out.push(t);
        }
    }
    Ok(out)
}

fn plan(source: &str, img: &ArchiveImage) -> Result<Plan, ImageError> {
    let name = img.display_name();
    let tags = tags_of(source, img)?;
    let cfg: ConfigFile = serde_json::from_slice(&img.config).map_err(|e| ImageError::BadConfig {
        image: name.clone(),
        message: format!("archive {source}: {}: not an image config: {e}", img.config_entry),
    })?;
    let diff_ids = cfg.rootfs.diff_ids;
    if diff_ids.len() != img.layers.len() {
        return Err(ImageError::BadConfig {
            image: name,
            message: format!(
                "archive {source}: {} lists {} diff_ids, the manifest {} layers",
                img.config_entry,
                diff_ids.len(),
                img.layers.len()
            ),
        });
    }
    let chains = chain_ids(&diff_ids);
    Ok(Plan { name, tags, diff_ids, chains, config: cfg.config.map(ImageRuntimeConfig::from).unwrap_or_default() })
}

impl ImageStore {
    /// Imports every image of the archive `reader` yields (docker-archive or OCI image layout,
    /// plain, gzip or zstd; see [`super::archive`]) and returns their records, in the archive's
    /// order. `source` names the archive in errors and logs (a path, `-`, `request body`).
    /// Each image is recorded under its names (normalized, e.g. `busybox:1.36` ->
    /// `docker.io/library/busybox:1.36`); a name held by another image moves to this one. An
    /// image without a name is recorded by ID only.
    ///
    /// All or nothing per archive (see the module docs). Errors: [`ImageError::Archive`] for an
    /// unreadable or inconsistent archive, [`ImageError::BadConfig`] for an image config that
    /// is not JSON or disagrees with the layers, [`ImageError::DigestMismatch`] for a blob or
    /// a layer's uncompressed content (`rootfs.diff_ids`) that is not what it should be,
    /// [`ImageError::Unpack`] for a hostile or unreadable layer entry, [`ImageError::Io`] /
    /// [`ImageError::State`] for the store itself.
    pub async fn import<R: Read + Send + 'static>(&self, reader: R, source: &str) -> Result<Vec<Image>, ImageError> {
        let imported = self.import_archive(reader, source).await;
        // The archive's buffers are free now: give them back (see crate::heap).
        crate::heap::release_free_memory();
        imported
    }

    /// [`ImageStore::import`] but for the memory release.
    async fn import_archive<R: Read + Send + 'static>(&self, reader: R, source: &str) -> Result<Vec<Image>, ImageError> {
        let started = std::time::Instant::now();
        let spool = self.dir.join("tmp").join(format!("import-{}", &new_id()[..12]));
        let src = source.to_string();
        // Digests of the layers the store has: their files are not unpacked early.
        let known: HashSet<String> = self.store.list::<LayerRecord>(LAYERS)?.into_iter().flat_map(|(_, l)| [l.digest, l.diff_id]).collect();
        let archive = tokio::task::spawn_blocking(move || read_archive(reader, spool, &src, &|d: &str| known.contains(d)))
            .await
            .map_err(|e| ImageError::Archive { archive: source.to_string(), message: format!("reading task failed: {e}") })??;
        let plans = archive.images.iter().map(|img| plan(source, img)).collect::<Result<Vec<_>, _>>()?;
        // A layer file under two chain IDs (one layer at two depths) is unpacked again for the
        // second: keep its spooled file. Drop what files no manifest names were unpacked into.
        let mut chains_of: HashMap<&Path, HashSet<&str>> = HashMap::new();
        for (img, plan) in archive.images.iter().zip(&plans) {
            for (layer, chain) in img.layers.iter().zip(&plan.chains) {
                chains_of.entry(layer.path.as_path()).or_default().insert(chain);
            }
        }
        archive.settle_unpacked(&chains_of.iter().map(|(p, c)| (*p, c.len())).collect());
        let mut created: Vec<String> = Vec::new();
        let gc = self.gc.read().await;
        let result = self.import_locked(source, &archive, &plans, &mut created).await;
        drop(gc);
        drop(archive);
        match result {
            Ok(images) => {
                tracing::info!(
                    source,
                    images = images.len(),
                    layers_unpacked = created.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "imported"
                );
                Ok(images)
            }
            Err(e) => {
                if !created.is_empty() {
                    let _gc = self.gc.write().await;
                    if let Err(ce) = self.collect_layers(Some(&created)) {
                        tracing::warn!(source, "removing the layers of a failed import: {ce}");
                    }
                }
                Err(e)
            }
        }
    }

    /// Steps 2 and 3 of the module docs; the caller holds the GC lock shared. Chain IDs of the
    /// layers unpacked here are pushed to `created` as they are recorded.
    async fn import_locked(
        &self,
        source: &str,
        archive: &Archive,
        plans: &[Plan],
        created: &mut Vec<String>,
    ) -> Result<Vec<Image>, ImageError> {
        // Up to IMPORT_UNPACKS layers at once, as a pull does; a layer two images share is
        // unpacked once (the second waits on its chain ID's lock, then finds it). Every future
        // runs to its end before the first error is returned.
        let mut layers = Vec::new();
        for (img, plan) in archive.images.iter().zip(plans) {
            for ((layer, diff_id), chain_id) in img.layers.iter().zip(&plan.diff_ids).zip(&plan.chains) {
                layers.push(async move {
                    let what = format!("archive {source}: layer {}", layer.entry);
                    let unpack = |tmp_dir: std::path::PathBuf, _blob: std::path::PathBuf| async move {
                        let unpacked = match archive.take_unpacked(&layer.path) {
                            // Unpacked while the archive was read: adopt it (one filesystem,
                            // the store's images/ directory).
                            Some(Ok(early)) => {
                                std::fs::rename(&early.dir, &tmp_dir).map_err(|e| ImageError::Io {
                                    path: tmp_dir.clone(),
                                    message: format!("moving the layer unpacked at {} here: {e}", early.dir.display()),
                                })?;
                                early.layer
                            }
                            // Not unpacked early, or that gave up (over its budget) or failed:
                            // unpack the spooled file now; its error, if any, is the one that
                            // counts.
                            not_early => {
                                if let Some(Err(e)) = not_early {
                                    tracing::debug!(source, layer = %layer.entry, "unpacking again after the early unpack: {e}");
                                }
                                let diff = tmp_dir.join("diff");
                                std::fs::create_dir_all(&diff).map_err(|e| ImageError::io(&diff, e))?;
                                unpack_file(layer.path.clone(), diff, unpack_name(&layer.entry, source)).await?
                            }
                        };
                        layer_record(&plan.name, &what, unpacked, layer.digest.as_deref(), diff_id, chain_id)
                    };
                    self.ensure_layer(chain_id, unpack).await.map(|fresh| fresh.then(|| chain_id.clone()))
                });
            }
        }
        let results: Vec<Result<Option<String>, ImageError>> = futures_util::stream::iter(layers).buffered(IMPORT_UNPACKS).collect().await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(Some(chain_id)) => created.push(chain_id),
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let _meta = self.meta.lock().await;
        for (img, plan) in archive.images.iter().zip(plans) {
            self.put_config(&plan.name, &img.id, &img.config)?;
        }
        let mut out = Vec::new();
        for (img, plan) in archive.images.iter().zip(plans) {
            let mut image = self.store.get::<Image>(IMAGES, &img.id)?.unwrap_or_else(|| Image {
                id: img.id.clone(),
                created_at: now_nanos(),
                ..Default::default()
            });
            image.config = plan.config.clone();
            image.chain_ids = plan.chains.clone();
            image.media_type = img.media_type.clone();
            image.size = img.layers.iter().map(|l| l.size).sum();
            for t in &plan.tags {
                self.move_tag(&mut image, t.clone())?;
            }
            self.store.put(IMAGES, &img.id, &image)?;
            out.push(image);
        }
        Ok(out)
    }
}
