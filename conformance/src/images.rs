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
//! - `deep`: busybox plus 120 one-file layers; `scratch`: a config without any layer.
//! - `pause`: one static program that waits for SIGTERM/SIGINT and exits 0 (containerd's
//!   `sandbox_image`).

use crate::imagekit::{busybox_tree, compile_static, compress, image_config, Compression, Layer, TarBuilder, PAUSE_SRC};
use crate::imagekit::{OCI_INDEX, OCI_MANIFEST, PATH_ENV};
use crate::registry::Registry;
use anyhow::Result;
use std::path::Path;

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
    /// `<reg>/deep:latest`: busybox plus 120 one-file layers (`/deep/<n>`), more than one page of
    /// overlay mount data with the store's full layer paths.
    pub deep: String,
    /// `<reg>/scratch:latest`: a config and no layer at all (`FROM scratch` with only metadata).
    pub scratch: String,
    /// `<reg>/pause:latest`, only pushed when asked (containerd's sandbox_image).
    pub pause: Option<String>,
    /// A reference that does not exist in the registry.
    pub missing: String,
}

pub(crate) fn busybox_tar() -> Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    busybox_tree(&mut t, &[])?;
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")?;
    t.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    t.dir("tmp", 0o1777, 0)?;
    for d in ["root", "home", "proc", "sys", "dev", "etc", "var", "run"] {
        t.dir(d, 0o755, 0)?;
    }
    t.finish()
}

fn config_json(arch: &str, layers: &[&Layer], user: &str, entrypoint: &[&str], cmd: &[&str]) -> Vec<u8> {
    let mut cfg = serde_json::json!({ "Env": [PATH_ENV], "Cmd": cmd });
    if !user.is_empty() {
        cfg["User"] = user.into();
    }
    if !entrypoint.is_empty() {
        cfg["Entrypoint"] = serde_json::json!(entrypoint);
    }
    image_config(arch, layers, cfg)
}

/// [`imagekit::push_image`](crate::imagekit::push_image) under `tag`.
fn push_image(reg: &Registry, name: &str, tag: &str, config: &[u8], layers: &[&Layer], docker: bool) -> Result<(String, usize)> {
    crate::imagekit::push_image(reg, name, Some(tag), config, layers, docker)
}

fn pause_tar(work: &Path) -> Result<Vec<u8>> {
    let bin = compile_static(work, "pause", PAUSE_SRC)?;
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
    // deep:latest: 120 tiny layers on busybox.
    let mut deep = vec![base];
    for i in 0..120 {
        let mut t = TarBuilder::new();
        t.file(&format!("deep/{i}"), 0o644, format!("layer {i}\n").as_bytes())?;
        deep.push(compress(t.finish()?, Compression::Gzip, false)?);
    }
    let refs: Vec<&Layer> = deep.iter().collect();
    let dcfg = config_json("amd64", &refs, "", &[], &["sh"]);
    push_image(reg, "deep", "latest", &dcfg, &refs, false)?;
    // scratch:latest: no layers.
    let scfg = config_json("amd64", &[], "", &["/bin/busybox"], &["true"]);
    push_image(reg, "scratch", "latest", &scfg, &[], false)?;
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
        deep: format!("{addr}/deep:latest"),
        scratch: format!("{addr}/scratch:latest"),
        pause,
        missing: format!("{addr}/does-not-exist:latest"),
        registry: addr,
    })
}
