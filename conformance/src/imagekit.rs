//! Building blocks of the test images, shared by the suite's images (`images.rs`) and
//! critest-prep's stand-ins for critest's: deterministic tar layers, their compression and
//! diff IDs, the libraries a dynamic program needs, and small static programs compiled with
//! `rustc` (the pod pause among them). Media types follow the OCI image spec
//! (image-layout, manifest, config) and Docker's schema2.

use crate::registry::{sha256_digest, Registry};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The `PATH` of every test image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One layer blob ready to push.
pub struct Layer {
    /// Its media type.
    pub media_type: &'static str,
    /// The (compressed) bytes.
    pub blob: Vec<u8>,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

/// How a layer is compressed.
pub enum Compression {
    /// gzip.
    Gzip,
    /// zstd (OCI only).
    Zstd,
    /// Plain tar.
    None,
}

/// Compresses a layer tar; `docker` picks Docker's media type for gzip.
pub fn compress(tar: Vec<u8>, c: Compression, docker: bool) -> Result<Layer> {
    let diff_id = sha256_digest(&tar);
    let (media_type, blob) = match c {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&tar)?;
            (if docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP }, e.finish()?)
        }
        Compression::Zstd => (OCI_LAYER_ZSTD, zstd::encode_all(&tar[..], 3)?),
        Compression::None => (OCI_LAYER_TAR, tar),
    };
    Ok(Layer { media_type, blob, diff_id })
}

/// A small tar writer with deterministic headers (mtime fixed, owner given per directory;
/// files and links belong to root).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
    dirs: BTreeSet<String>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        TarBuilder { b: tar::Builder::new(Vec::new()), dirs: BTreeSet::new() }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h
    }

    /// Adds `path` (owned by `uid`:`uid`, `mode`) and its missing parents (root, 0755) as
    /// directories; a directory already added is left as it is.
    pub fn dir(&mut self, path: &str, mode: u32, uid: u64) -> Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755, 0)?;
        }
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, uid);
        self.b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
        self.dirs.insert(path.to_string());
        Ok(())
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent, 0o755, 0)?;
        }
        Ok(())
    }

    /// Adds a regular file (its parents as needed).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64, 0);
        self.b.append_data(&mut h, path.trim_matches('/'), data)?;
        Ok(())
    }

    /// Adds a hard link `path` -> `target` (both archive paths).
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Link, 0o755, 0, 0);
        self.b.append_link(&mut h, path.trim_matches('/'), target.trim_matches('/'))?;
        Ok(())
    }

    /// The archive's bytes.
    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

/// Paths of the shared objects `ldd <bin>` lists (libraries and the ELF interpreter).
/// Errors: ldd cannot run, or lists nothing (a static program).
pub fn ldd_paths(bin: &str) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            v.push(path.to_string());
        }
    }
    if v.is_empty() {
        bail!("ldd {bin} listed no libraries; is it a dynamic executable (Debian's busybox is)?");
    }
    Ok(v)
}

/// Adds Debian's dynamic `/bin/busybox` to `t` with the shared libraries `ldd` lists (at their
/// paths), a hard link per applet from `busybox --list-full`, and each of `extra` (absolute host
/// paths of more dynamic programs, with their own libraries; their names win over an applet of
/// the same path). Errors: a program or library that cannot be read (its Debian package named).
pub fn busybox_tree(t: &mut TarBuilder, extra: &[(&str, &str)]) -> Result<()> {
    let bb = std::fs::read("/bin/busybox").context("read /bin/busybox (Debian package busybox)")?;
    t.file("bin/busybox", 0o755, &bb)?;
    let mut libs: BTreeSet<String> = ldd_paths("/bin/busybox")?.into_iter().collect();
    for (bin, pkg) in extra {
        let data = std::fs::read(bin).with_context(|| format!("read {bin} (Debian package {pkg})"))?;
        t.file(bin, 0o755, &data)?;
        libs.extend(ldd_paths(bin)?);
    }
    for lib in &libs {
        // The real file (ldd may name a symlink) under the name the loader looks for.
        let data = std::fs::read(lib).with_context(|| format!("read {lib}"))?;
        t.file(lib, 0o755, &data)?;
    }
    let list = Command::new("/bin/busybox").arg("--list-full").output().context("busybox --list-full")?;
    let extra_paths: Vec<&str> = extra.iter().map(|(b, _)| b.trim_start_matches('/')).collect();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || extra_paths.contains(&applet) {
            continue;
        }
        t.hardlink(applet, "bin/busybox")?;
    }
    Ok(())
}

/// An image config (OCI image-spec config; Docker's has the same fields) for `arch`/linux with
/// runtime config `cfg` (`Env`, `Cmd`, `User`, ...) and one diff ID and history entry per layer.
pub fn image_config(arch: &str, layers: &[&Layer], cfg: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": cfg,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "berth-conformance"})).collect::<Vec<_>>(),
    });
    // A Value of strings and arrays always serializes.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// Pushes `config`, `layers` and their manifest (Docker schema2 when `docker`, else OCI) to
/// repository `name` of `reg`, under `tag`, or only by digest when `tag` is None. Returns the
/// manifest's (digest, size). Errors: the registry's.
pub fn push_image(
    reg: &Registry,
    name: &str,
    tag: Option<&str>,
    config: &[u8],
    layers: &[&Layer],
    docker: bool,
) -> Result<(String, usize)> {
    let cfg_digest = reg.push_blob(name, config)?;
    let mut descs = Vec::new();
    for l in layers {
        let d = reg.push_blob(name, &l.blob)?;
        descs.push(serde_json::json!({ "mediaType": l.media_type, "digest": d, "size": l.blob.len() }));
    }
    let (mt, cmt) = if docker { (DOCKER_MANIFEST, DOCKER_CONFIG) } else { (OCI_MANIFEST, OCI_CONFIG) };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": { "mediaType": cmt, "digest": cfg_digest, "size": config.len() },
        "layers": descs,
    }))?;
    let digest = sha256_digest(&manifest);
    reg.push_manifest(name, tag.unwrap_or(&digest), mt, &manifest)?;
    Ok((digest, manifest.len()))
}

/// The pod pause: waits for SIGTERM/SIGINT and exits 0; reaps every exited child, as the
/// Kubernetes pause does (it is PID 1 of the pod).
pub const PAUSE_SRC: &str = r#"
extern "C" {
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn pause() -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn _exit(code: i32) -> !;
}
extern "C" fn on_term(_sig: i32) { unsafe { _exit(0) } }
extern "C" fn on_chld(_sig: i32) {
    let mut st = 0;
    unsafe { while waitpid(-1, &mut st, 1 /* WNOHANG */) > 0 {} }
}
fn main() {
    unsafe {
        signal(15, on_term);
        signal(2, on_term);
        signal(17, on_chld);
        loop { pause(); }
    }
}
"#;

/// Compiles the Rust program `src` as a static executable `work/<name>` (`rustc`, or `$RUSTC`,
/// with `+crt-static`) and returns its path. Errors: rustc missing or failing, with its output.
pub fn compile_static(work: &Path, name: &str, src: &str) -> Result<PathBuf> {
    let src_path = work.join(format!("{name}.rs"));
    let bin = work.join(name);
    std::fs::write(&src_path, src)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["-O", "-C", "target-feature=+crt-static", "--edition", "2021", "-o"])
        .arg(&bin)
        .arg(&src_path)
        .output()
        .with_context(|| format!("run {rustc} to build {name}"))?;
    if !out.status.success() {
        bail!("rustc failed to build {name} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}
