//! Phase 9: `kind load` against a pull of the same image (issue #13: an import of a 150 MB
//! multi-layer image takes no longer than a pull of it).
//!
//! One image is made once per run: five layers of about 30 MB each, 16 KiB files (half
//! pseudo-random bytes, half text, so gzip halves them as it does real layers), a whiteout and an
//! opaque directory in the upper layers. It is pushed to the bench registry with gzip'd layers
//! (Docker schema2), and written as the docker-archive `docker save` writes, which is what
//! `kind load docker-image` pipes into the node: uncompressed layer tars, `manifest.json`, the
//! config. Both paths end with the same image ID. The same layers are pushed a second time
//! zstd-compressed (an OCI manifest, `bench-big-zstd:latest`): same diff IDs, same config, same
//! image ID.
//!
//! Per target, `--imports` rounds of: a timed import of the archive (berth: the `berth image
//! import` CLI through the running daemon; containerd: `ctr -n k8s.io images import`, which
//! unpacks into its snapshotter), RemoveImage, a timed PullImage, RemoveImage, a timed PullImage
//! of the zstd image, RemoveImage. Each timing starts
//! after an untimed sync(2), so that none pays for writing back what the one before it wrote.
//! After each import and pull, ImageStatus must show the config digest as the image ID; what the
//! target holds on disk before the phase, after the first import and after its RemoveImage is
//! noted (every round does the whole work, and ctr's import did unpack).

use crate::phases::images_on_disk;
use crate::rpc::{image_spec, remove_image};
use crate::{kind_name, Samples};
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::daemon::TargetKind;
use berth_conformance::imagekit::{compress, image_config, push_image, Compression, Layer, TarBuilder, PATH_ENV};
use berth_conformance::registry::{sha256_digest, Registry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Layers of the image.
const LAYERS: usize = 5;
/// Files per layer.
const FILES_PER_LAYER: usize = 1900;
/// Bytes per file.
const FILE_SIZE: usize = 16 * 1024;

/// The image both paths load.
pub struct BigImage {
    /// `127.0.0.1:PORT/bench-big:latest`: pulled by this name, and the archive's tag.
    pub name: String,
    /// `127.0.0.1:PORT/bench-big-zstd:latest`: the same layers zstd-compressed.
    pub zstd_name: String,
    /// `sha256:` of its config: the image ID both paths must end with.
    pub id: String,
    /// The docker-archive on disk.
    pub archive: PathBuf,
    /// Bytes of the uncompressed layer tars (what an unpack writes, give or take headers).
    pub unpacked: u64,
    /// Bytes of the gzip'd layer blobs a pull downloads.
    pub compressed: u64,
    /// Bytes of the zstd layer blobs.
    pub zstd_compressed: u64,
    /// Regular files over all layers.
    pub files: usize,
}

/// What phase 9 measured on one target.
#[derive(Default)]
pub struct ImportResults {
    /// Timed imports, in round order.
    pub import: Samples,
    /// Timed pulls, in round order.
    pub pull: Samples,
    /// Timed pulls of the zstd image, in round order.
    pub pull_zstd: Samples,
    /// What the target held on disk before the phase, after an import and after its RemoveImage.
    pub disk: String,
}

/// A fast deterministic byte stream (xorshift64*), for content gzip cannot shrink.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One layer's tar: `FILES_PER_LAYER` files under `l<i>/<dir>/`; layers above the first also
/// delete one file of layer 0 (whiteout) and make `l0/d0` opaque.
fn layer_tar(i: usize, noise: &mut Noise) -> Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    let mut data = vec![0u8; FILE_SIZE];
    for f in 0..FILES_PER_LAYER {
        noise.fill(&mut data[..FILE_SIZE / 2]);
        let text = format!("layer {i} file {f} ");
        for (k, b) in data[FILE_SIZE / 2..].iter_mut().enumerate() {
            *b = text.as_bytes()[k % text.len()];
        }
        t.file(&format!("l{i}/d{}/f{f}", f / 100), 0o644, &data)?;
    }
    if i > 0 {
        t.file(&format!("l0/d1/.wh.f{}", 100 + i), 0o644, b"")?;
        if i == LAYERS - 1 {
            t.file("l0/d0/.wh..wh..opq", 0o644, b"")?;
        }
    }
    t.finish()
}

/// Builds the image, pushes it to `reg` and writes its docker-archive into `work`.
pub fn build(reg: &Registry, work: &Path) -> Result<BigImage> {
    let started = Instant::now();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut tars = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut zlayers: Vec<Layer> = Vec::new();
    for i in 0..LAYERS {
        let tar = layer_tar(i, &mut noise)?;
        layers.push(compress(tar.clone(), Compression::Gzip, true)?);
        zlayers.push(compress(tar.clone(), Compression::Zstd, false)?);
        tars.push(tar);
    }
    let refs: Vec<&Layer> = layers.iter().collect();
    let config = image_config("amd64", &refs, serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"] }));
    push_image(reg, "bench-big", Some("latest"), &config, &refs, true)?;
    let name = format!("{}/bench-big:latest", reg.addr);
    let zrefs: Vec<&Layer> = zlayers.iter().collect();
    push_image(reg, "bench-big-zstd", Some("latest"), &config, &zrefs, false)?;
    let zstd_name = format!("{}/bench-big-zstd:latest", reg.addr);

    // The archive, as `docker save` (before 25) lays it out.
    let archive = work.join("bench-big.tar");
    let file = std::fs::File::create(&archive).with_context(|| format!("create {}", archive.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).with_context(|| format!("write {path} into the archive"))
    };
    let mut names = Vec::new();
    for (tar, l) in tars.iter().zip(&layers) {
        let n = format!("{}/layer.tar", l.diff_id.trim_start_matches("sha256:"));
        add(&n, tar)?;
        names.push(n);
    }
    let cfg_name = format!("{}.json", sha256_digest(&config).trim_start_matches("sha256:"));
    add(&cfg_name, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!([{ "Config": cfg_name, "RepoTags": [name], "Layers": names }]))?;
    add("manifest.json", &manifest)?;
    b.into_inner()?.flush()?;
    let img = BigImage {
        name,
        zstd_name,
        zstd_compressed: zlayers.iter().map(|l| l.blob.len() as u64).sum(),
        id: sha256_digest(&config),
        archive,
        unpacked: tars.iter().map(|t| t.len() as u64).sum(),
        compressed: layers.iter().map(|l| l.blob.len() as u64).sum(),
        files: LAYERS * FILES_PER_LAYER,
    };
    eprintln!(
        "bench: import image: {LAYERS} layers, {} files, {:.0} MB unpacked, {:.0} MB gzip'd, {:.0} MB zstd (built in {:.1} s)",
        img.files,
        img.unpacked as f64 / 1e6,
        img.compressed as f64 / 1e6,
        img.zstd_compressed as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(img)
}

/// The import command for `kind`: berth's CLI with the bench daemon's config (it goes through
/// that daemon's inspect socket), or containerd's ctr on the bench daemon's socket.
fn import_command(kind: TargetKind, dir: &Path, archive: &Path) -> Command {
    let mut cmd = match kind {
        TargetKind::Berth => {
            let mut c = Command::new(crate::berth_bin());
            c.args(["image", "import", "--config"]).arg(dir.join("berth.toml"));
            c
        }
        _ => {
            let mut c = Command::new("ctr");
            c.arg("--address").arg(dir.join("containerd.sock")).args(["-n", "k8s.io", "images", "import"]);
            c
        }
    };
    cmd.arg(archive).stdin(Stdio::null());
    cmd
}

/// Flushes every filesystem's dirty pages (sync(2)).
fn sync_disks() {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
}

/// Fails unless ImageStatus of `name` shows the image's ID.
async fn check_present(kind: TargetKind, c: &mut Clients, img: &BigImage, name: &str, after: &str) -> Result<()> {
    let st = c.img.image_status(cri::ImageStatusRequest { image: Some(image_spec(name)), verbose: false }).await?.into_inner();
    match st.image {
        Some(i) if i.id == img.id => Ok(()),
        Some(i) => bail!("{}: after {after}, ImageStatus {name} has ID {}, expected {}", kind_name(kind), i.id, img.id),
        None => bail!("{}: after {after}, ImageStatus {name} finds nothing", kind_name(kind)),
    }
}

/// A timed PullImage of `name` (after an untimed sync), checked, then RemoveImage.
async fn timed_pull(kind: TargetKind, c: &mut Clients, img: &BigImage, name: &str, round: usize) -> Result<std::time::Duration> {
    sync_disks();
    let t = Instant::now();
    c.img
        .pull_image(cri::PullImageRequest { image: Some(image_spec(name)), auth: None, sandbox_config: None })
        .await
        .with_context(|| format!("PullImage {name} (round {round})"))?;
    let took = t.elapsed();
    check_present(kind, c, img, name, "the pull").await?;
    remove_image(c, name).await?;
    Ok(took)
}

/// Phase 9 on one target: `n` rounds of import, RemoveImage, pull, RemoveImage.
pub async fn phase_import(kind: TargetKind, dir: &Path, c: &mut Clients, img: &BigImage, n: usize, r: &mut ImportResults) -> Result<()> {
    let before = images_on_disk(kind, dir);
    for i in 0..n {
        let mut cmd = import_command(kind, dir, &img.archive);
        sync_disks();
        let t = Instant::now();
        let out = cmd.output().with_context(|| format!("{}: run the import command {cmd:?}", kind_name(kind)))?;
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("{cmd:?} (round {i}) exited with {}: {}", out.status, stderr.trim());
        }
        if stderr.contains("no daemon answers") {
            bail!("berth image import did not go through the daemon: {}", stderr.trim());
        }
        r.import.0.push(took);
        check_present(kind, c, img, &img.name, "the import").await?;
        let after_import = images_on_disk(kind, dir);
        remove_image(c, &img.name).await?;
        if i == 0 {
            r.disk = format!("before: {before}; after an import: {after_import}; after its RemoveImage: {}", images_on_disk(kind, dir));
        }
        r.pull.0.push(timed_pull(kind, c, img, &img.name, i).await?);
        r.pull_zstd.0.push(timed_pull(kind, c, img, &img.zstd_name, i).await?);
    }
    Ok(())
}
