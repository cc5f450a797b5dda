//! Test images built from this machine's Debian files and pushed to the local registry.
//!
//! - `busybox`: Debian's dynamic `/bin/busybox`, the shared libraries `ldd` lists (at their
//!   paths), a hard link per applet from `busybox --list-full`, /etc/passwd and /etc/group
//!   (root, nobody), /tmp; config `Cmd ["sh"]` and `PATH`. Pushed as `busybox:latest` (OCI
//!   manifest), `library/busybox:docker` (Docker schema2) and `busybox:multiarch` (OCI index
//!   with linux/amd64 and a bogus linux/arm64 entry).
//! - `user`: busybox plus `app:x:1234:1234` and config `User "app"`.
//! - `layers`: busybox plus 3 layers (gzip, zstd, uncompressed) exercising whiteouts and an
//!   opaque directory.
//! - `pause`: one static program that waits for SIGTERM/SIGINT and exits 0 (containerd's
//!   `sandbox_image`).

use crate::registry::{sha256_digest, Registry};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// References (all `127.0.0.1:PORT/...`) and digests of the pushed test images.
#[derive(Debug, Clone)]
pub struct TestImages {
    /// Registry host, `127.0.0.1:PORT`.
    pub registry: String,
    /// `<reg>/busybox:latest` (OCI manifest).
    pub busybox: String,
    /// Manifest digest of `busybox:latest` (`sha256:...`).
    pub busybox_digest: String,
    /// `<reg>/library/busybox:docker` (Docker schema2 manifest).
    pub busybox_docker: String,
    /// `<reg>/busybox:multiarch` (OCI index: linux/amd64 + bogus linux/arm64).
    pub busybox_multiarch: String,
    /// `<reg>/user:latest` (config User "app", uid 1234).
    pub user: String,
    /// `<reg>/layers:latest` (whiteouts, opaque dir, gzip+zstd+plain layers).
    pub layers: String,
    /// `<reg>/pause:latest`, only pushed when asked (containerd's sandbox_image).
    pub pause: Option<String>,
    /// A reference that does not exist in the registry.
    pub missing: String,
}

/// One layer blob ready to push.
struct Layer {
    media_type: &'static str,
    blob: Vec<u8>,
    diff_id: String,
}

enum Compression {
    Gzip,
    Zstd,
    None,
}

fn compress(tar: Vec<u8>, c: Compression, docker: bool) -> Result<Layer> {
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

/// A small tar writer with deterministic headers (mtime fixed, uid/gid given).
struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
    dirs: BTreeSet<String>,
}

impl TarBuilder {
    fn new() -> Self {
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

    /// Adds `path` and its missing parents as directories (mode 0755, or `mode` for `path`).
    fn dir(&mut self, path: &str, mode: u32, uid: u64) -> Result<()> {
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

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64, 0);
        self.b.append_data(&mut h, path.trim_matches('/'), data)?;
        Ok(())
    }

    fn hardlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Link, 0o755, 0, 0);
        self.b.append_link(&mut h, path.trim_matches('/'), target.trim_matches('/'))?;
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

/// Paths of the shared objects `ldd <bin>` lists (libraries and the ELF interpreter).
fn ldd_paths(bin: &str) -> Result<Vec<String>> {
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
        bail!("ldd {bin} listed no libraries; is /bin/busybox Debian's dynamic busybox?");
    }
    Ok(v)
}

fn busybox_tar() -> Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    let bb = std::fs::read("/bin/busybox").context("read /bin/busybox (Debian package busybox)")?;
    t.file("bin/busybox", 0o755, &bb)?;
    for lib in ldd_paths("/bin/busybox")? {
        let data = std::fs::read(&lib).with_context(|| format!("read {lib}"))?;
        t.file(&lib, 0o755, &data)?;
    }
    let list = Command::new("/bin/busybox").arg("--list-full").output().context("busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        t.hardlink(applet, "bin/busybox")?;
    }
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")?;
    t.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    t.dir("tmp", 0o1777, 0)?;
    for d in ["root", "home", "proc", "sys", "dev", "etc", "var", "run"] {
        t.dir(d, 0o755, 0)?;
    }
    t.finish()
}

fn config_json(arch: &str, layers: &[&Layer], user: &str, entrypoint: &[&str], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let mut cfg = serde_json::json!({ "Env": [PATH_ENV], "Cmd": cmd });
    if !user.is_empty() {
        cfg["User"] = user.into();
    }
    if !entrypoint.is_empty() {
        cfg["Entrypoint"] = serde_json::json!(entrypoint);
    }
    serde_json::to_vec(&serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": cfg,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "berth-conformance"})).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
}

/// Pushes config + layers + manifest; returns (manifest digest, manifest size).
fn push_image(reg: &Registry, name: &str, tag: &str, config: &[u8], layers: &[&Layer], docker: bool) -> Result<(String, usize)> {
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
    let digest = reg.push_manifest(name, tag, mt, &manifest)?;
    Ok((digest, manifest.len()))
}

const PAUSE_SRC: &str = r#"
extern "C" {
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn pause() -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn _exit(code: i32) -> !;
}
extern "C" fn on_term(_sig: i32) { unsafe { _exit(0) } }
// Reaps every exited child, as the Kubernetes pause does (it is PID 1 of the pod).
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

fn pause_tar(work: &Path) -> Result<Vec<u8>> {
    let src = work.join("pause.rs");
    let bin = work.join("pause");
    std::fs::write(&src, PAUSE_SRC)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args(["-O", "-C", "target-feature=+crt-static", "--edition", "2021", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("run rustc to build the pause program")?;
    if !st.success() {
        bail!("rustc failed to build the static pause program ({st})");
    }
    let mut t = TarBuilder::new();
    t.file("pause", 0o755, &std::fs::read(&bin)?)?;
    t.finish()
}

/// Builds every test image and pushes it to `reg`; `with_pause` also builds the pause image.
/// `work` is a scratch directory.
pub fn build_and_push(reg: &Registry, work: &Path, with_pause: bool) -> Result<TestImages> {
    let addr = reg.addr.clone();
    let base_tar = busybox_tar()?;
    let base = compress(base_tar.clone(), Compression::Gzip, false)?;
    // busybox:latest, OCI.
    let cfg = config_json("amd64", &[&base], "", &[], &["sh"]);
    let (bb_digest, bb_size) = push_image(reg, "busybox", "latest", &cfg, &[&base], false)?;
    // library/busybox:docker, Docker schema2 (same layer bytes, docker media types).
    let dbase = compress(base_tar, Compression::Gzip, true)?;
    // A label makes its config (and so its image id) differ from busybox:latest.
    let mut dcfg: serde_json::Value = serde_json::from_slice(&config_json("amd64", &[&dbase], "", &[], &["sh"]))?;
    dcfg["config"]["Labels"] = serde_json::json!({ "variant": "docker-schema2" });
    let dcfg = serde_json::to_vec(&dcfg)?;
    push_image(reg, "library/busybox", "docker", &dcfg, &[&dbase], true)?;
    // busybox:multiarch: index of amd64 (the real one) and a bogus arm64 image.
    let mut bogus = TarBuilder::new();
    bogus.file("bogus-arm64", 0o644, b"not a real arm64 image\n")?;
    let bogus = compress(bogus.finish()?, Compression::Gzip, false)?;
    let acfg = config_json("arm64", &[&bogus], "", &[], &["sh"]);
    let (arm_digest, arm_size) = push_image(reg, "busybox", "arm64-bogus", &acfg, &[&bogus], false)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": bb_digest, "size": bb_size, "platform": { "architecture": "amd64", "os": "linux" } },
            { "mediaType": OCI_MANIFEST, "digest": arm_digest, "size": arm_size, "platform": { "architecture": "arm64", "os": "linux" } },
        ],
    }))?;
    reg.push_manifest("busybox", "multiarch", OCI_INDEX, &index)?;
    // user:latest.
    let mut u = TarBuilder::new();
    u.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1234:1234::/home/app:/bin/sh\n",
    )?;
    // `app` is also a member of `extra` (5000): SupplementalGroupsPolicy Merge adds it, Strict not.
    u.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\napp:x:1234:\nextra:x:5000:app\n")?;
    u.dir("home", 0o755, 0)?;
    u.dir("home/app", 0o755, 1234)?;
    let ul = compress(u.finish()?, Compression::Gzip, false)?;
    let ucfg = config_json("amd64", &[&base, &ul], "app", &[], &["sh"]);
    push_image(reg, "user", "latest", &ucfg, &[&base, &ul], false)?;
    // layers:latest.
    let mut l1 = TarBuilder::new();
    l1.file("data/a", 0o644, b"a from layer 1\n")?;
    l1.file("data/b", 0o644, b"b from layer 1\n")?;
    l1.file("opq/x", 0o644, b"x from layer 1\n")?;
    let l1 = compress(l1.finish()?, Compression::Gzip, false)?;
    let mut l2 = TarBuilder::new();
    l2.file("data/.wh.a", 0o644, b"")?;
    l2.dir("opq", 0o755, 0)?;
    l2.file("opq/.wh..wh..opq", 0o644, b"")?;
    l2.file("opq/y", 0o644, b"y from layer 2\n")?;
    let l2 = compress(l2.finish()?, Compression::Zstd, false)?;
    let mut l3 = TarBuilder::new();
    l3.file("layer3.txt", 0o644, b"layer 3\n")?;
    let l3 = compress(l3.finish()?, Compression::None, false)?;
    let lcfg = config_json("amd64", &[&base, &l1, &l2, &l3], "", &[], &["sh"]);
    push_image(reg, "layers", "latest", &lcfg, &[&base, &l1, &l2, &l3], false)?;
    // pause:latest.
    let pause = if with_pause {
        let p = compress(pause_tar(work)?, Compression::Gzip, false)?;
        let pcfg = config_json("amd64", &[&p], "", &["/pause"], &[]);
        push_image(reg, "pause", "latest", &pcfg, &[&p], false)?;
        Some(format!("{addr}/pause:latest"))
    } else {
        None
    };
    Ok(TestImages {
        busybox: format!("{addr}/busybox:latest"),
        busybox_digest: bb_digest,
        busybox_docker: format!("{addr}/library/busybox:docker"),
        busybox_multiarch: format!("{addr}/busybox:multiarch"),
        user: format!("{addr}/user:latest"),
        layers: format!("{addr}/layers:latest"),
        pause,
        missing: format!("{addr}/does-not-exist:latest"),
        registry: addr,
    })
}
