//! End-to-end test of [`super::ImageStore`] against a real `docker-registry` on 127.0.0.1.
//! Needs root (whiteout devices, trusted xattrs, chown); skipped with a message otherwise.

use super::*;
use crate::config::{ImageConfig, RegistryConfig};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// The registry process; killed by PID and reaped on drop (also when a test panics).
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Starts `docker-registry` on a free 127.0.0.1 port; with `htpasswd` (a `user:bcrypt` line) it
/// requires basic auth.
fn start_registry(dir: &Path, htpasswd: Option<&str>) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.join("registry.yml");
    let mut yml = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    if let Some(line) = htpasswd {
        let file = dir.join("htpasswd");
        std::fs::write(&file, format!("{line}\n")).unwrap();
        yml.push_str(&format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", file.display()));
    }
    std::fs::write(&cfg, yml).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let reg = Registry { child, port };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return reg;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("docker-registry did not listen on 127.0.0.1:{port}; see {}", dir.join("registry.log").display());
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn header(path: &str, kind: tar::EntryType, size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) {
    let mode = if kind == tar::EntryType::Directory { 0o755 } else { 0o644 };
    let mut h = header(path, kind, data.len(), mode);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

struct Pushed {
    config_digest: String,
    manifest_digest: String,
    docker_config_digest: String,
    index_digest: String,
}

async fn push_images(port: u16) -> Pushed {
    push_images_as(port, &OciAuth::Anonymous).await
}

async fn push_images_as(port: u16, auth: &OciAuth) -> Pushed {
    use tar::EntryType::*;
    let layer1 = tar_of(|b| {
        add(b, "etc/", Directory, b"", None);
        add(b, "etc/hello", Regular, b"hello\n", None);
        add(b, ".wh.removed", Regular, b"", None);
        add(b, "opq/", Directory, b"", None);
        add(b, "opq/.wh..wh..opq", Regular, b"", None);
        add(b, "bin/sh", Symlink, b"", Some("/bin/busybox"));
    });
    let layer2 = tar_of(|b| {
        add(b, "etc/hello", Regular, b"v2\n", None);
        add(b, "etc/hello.link", Link, b"", Some("etc/hello"));
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer1).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(layer2.as_slice(), 3).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": "1000", "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer1), sha(&layer2)]}
    })
    .to_string();
    let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() });
    let host = format!("127.0.0.1:{port}");
    let repo = "test/img".to_string();
    let layers = vec![
        ImageLayer::new(gz.clone(), "application/vnd.oci.image.layer.v1.tar+gzip".into(), None),
        ImageLayer::new(zst, "application/vnd.oci.image.layer.v1.tar+zstd".into(), None),
    ];
    let cfg = Config::oci_v1(config.clone().into_bytes(), None);
    client.push(&Reference::with_tag(host.clone(), repo.clone(), "1".into()), &layers, cfg, auth, None).await.unwrap();
    let (_, manifest_digest) = client
        .pull_manifest_raw(
            &Reference::with_tag(host.clone(), repo.clone(), "1".into()),
            auth,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .unwrap();

    // A docker schema2 image (arm64 config) sharing the gzip layer, and an index pointing at both.
    let docker_config = serde_json::json!({
        "architecture": "arm64", "os": "linux", "config": {"User": "app", "Entrypoint": null, "Cmd": null},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer1)]}
    })
    .to_string();
    let r = Reference::with_tag(host.clone(), repo.clone(), "docker".into());
    client.push_blob(&r, docker_config.clone().into_bytes(), &sha(docker_config.as_bytes())).await.unwrap();
    let docker_manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": docker_config.len(), "digest": sha(docker_config.as_bytes())},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": gz.len(), "digest": sha(&gz)}]
    })
    .to_string();
    client
        .push_manifest_raw(
            &r,
            docker_manifest.clone().into_bytes(),
            "application/vnd.docker.distribution.manifest.v2+json".parse().unwrap(),
        )
        .await
        .unwrap();
    let (oci_manifest_raw, _) = client
        .pull_manifest_raw(
            &Reference::with_tag(host.clone(), repo.clone(), "1".into()),
            auth,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": docker_manifest.len(), "digest": sha(docker_manifest.as_bytes()), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": oci_manifest_raw.len(), "digest": manifest_digest, "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    })
    .to_string();
    client
        .push_manifest_raw(
            &Reference::with_tag(host.clone(), repo.clone(), "multi".into()),
            index.clone().into_bytes(),
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        )
        .await
        .unwrap();
    Pushed {
        config_digest: sha(config.as_bytes()),
        manifest_digest,
        docker_config_digest: sha(docker_config.as_bytes()),
        index_digest: sha(index.as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpack_resolve_remove_against_a_real_registry() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping pull_unpack_resolve_remove_against_a_real_registry: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(tmp.path(), None);
    let port = reg.port;
    let pushed = push_images(port).await;

    let mut cfg = ImageConfig::default();
    cfg.insecure_registries.push(format!("127.0.0.1:{port}"));
    cfg.registries
        .insert("registry.k8s.io".into(), RegistryConfig { mirrors: vec![format!("http://127.0.0.1:{port}")], mirrors_only: true });
    let state = Arc::new(crate::state::Store::open(&tmp.path().join("state")).unwrap());
    let images = Arc::new(ImageStore::open(tmp.path().join("images"), state.clone(), cfg.clone()).unwrap());

    // Two concurrent pulls of the same image share the layers without corrupting them.
    let name = format!("127.0.0.1:{port}/test/img:1");
    let (a, b) = tokio::join!(images.pull(&name, None), images.pull(&name, None));
    let img = a.unwrap();
    assert_eq!(b.unwrap().id, img.id);
    assert_eq!(img.id, pushed.config_digest);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(img.repo_digests, vec![format!("127.0.0.1:{port}/test/img@{}", pushed.manifest_digest)]);
    assert_eq!(img.config.user, "1000");
    assert_eq!(img.config.cmd, vec!["/bin/sh"]);
    assert_eq!(img.chain_ids.len(), 2);
    assert!(img.size > 0);
    // The config blob is kept byte for byte (export needs it), under its digest.
    let kept = images.config_blob(&img.id).unwrap().expect("the pulled config blob is kept");
    assert_eq!(sha(&kept), img.id);
    assert!(tmp.path().join("images/configs").join(img.id.trim_start_matches("sha256:")).is_file());

    let dirs = images.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(std::fs::read(dirs[0].join("etc/hello")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(dirs[1].join("etc/hello")).unwrap(), b"v2\n");
    assert_eq!(std::fs::read(dirs[1].join("etc/hello.link")).unwrap(), b"v2\n");
    let wh = std::fs::symlink_metadata(dirs[0].join("removed")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(whiteout::lgetxattr(&dirs[0].join("opq"), whiteout::OPAQUE_XATTR).unwrap().as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read_link(dirs[0].join("bin/sh")).unwrap(), Path::new("/bin/busybox"));

    // Pulling again does not unpack again.
    let ino = std::fs::metadata(&dirs[0]).unwrap().ino();
    let again = images.pull(&name, None).await.unwrap();
    assert_eq!(again.id, img.id);
    assert_eq!(std::fs::metadata(&dirs[0]).unwrap().ino(), ino);

    // Through the mirror: stored under the upstream name.
    let upstream = "registry.k8s.io/test/img:1";
    let via_mirror = images.pull(upstream, None).await.unwrap();
    assert_eq!(via_mirror.id, img.id);
    assert!(via_mirror.repo_tags.contains(&upstream.to_string()));
    assert!(via_mirror.repo_digests.contains(&format!("registry.k8s.io/test/img@{}", pushed.manifest_digest)));

    // An index resolves to linux/amd64; its digest is the repo digest.
    let multi = images.pull(&format!("127.0.0.1:{port}/test/img:multi"), None).await.unwrap();
    assert_eq!(multi.id, img.id);
    assert!(multi.repo_digests.contains(&format!("127.0.0.1:{port}/test/img@{}", pushed.index_digest)));

    // A docker schema2 image sharing the first layer.
    let docker = images.pull(&format!("127.0.0.1:{port}/test/img:docker"), None).await.unwrap();
    assert_eq!(docker.id, pushed.docker_config_digest);
    assert_eq!(docker.config.user, "app");
    assert_eq!(docker.chain_ids[0], img.chain_ids[0]);
    assert_eq!(std::fs::metadata(&images.layer_dirs(&docker).unwrap()[0]).unwrap().ino(), ino);

    // Resolve by tag, ids, prefix and digest.
    let hexid = img.id.trim_start_matches("sha256:").to_string();
    for r in [
        name.clone(),
        img.id.clone(),
        hexid.clone(),
        hexid[..12].to_string(),
        format!("127.0.0.1:{port}/test/img@{}", pushed.manifest_digest),
    ] {
        assert_eq!(images.resolve(&r).unwrap().map(|i| i.id), Some(img.id.clone()), "{r}");
    }
    assert!(images.resolve("busybox").unwrap().is_none());
    assert!(matches!(images.resolve("Bad Name"), Err(ImageError::InvalidReference(_))));
    let usage = images.fs_usage().unwrap();
    assert!(usage.used_bytes > 0 && usage.inodes_used > 5, "{usage:?}");

    // A missing image is NotFound, named.
    let missing = format!("127.0.0.1:{port}/test/nope:1");
    match images.pull(&missing, None).await {
        Err(ImageError::NotFound { image, .. }) => assert_eq!(image, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Reopen: the records survive.
    drop(images);
    let images = ImageStore::open(tmp.path().join("images"), state.clone(), cfg).unwrap();
    assert_eq!(images.list().unwrap().len(), 2);

    // Removing one tag keeps the image; removing by id drops it and its unshared layers.
    images.remove(upstream).await.unwrap();
    let left = images.resolve(&img.id).unwrap().unwrap();
    assert!(!left.repo_tags.contains(&upstream.to_string()));
    images.remove(&img.id).await.unwrap();
    images.remove(&img.id).await.unwrap();
    assert!(images.resolve(&name).unwrap().is_none());
    assert!(dirs[0].is_dir(), "the layer shared with the docker image stays");
    assert!(!dirs[1].exists());
    images.remove(&format!("127.0.0.1:{port}/test/img:docker")).await.unwrap();
    assert!(images.list().unwrap().is_empty());
    assert!(images.config_blob(&img.id).unwrap().is_none(), "the config blob goes with its image");
    assert_eq!(std::fs::read_dir(tmp.path().join("images/configs")).unwrap().count(), 0);
    assert!(!dirs[0].exists());
    assert!(state.list::<LayerRecord>(crate::state::LAYERS).unwrap().is_empty());
    drop(reg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_basic_auth() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping pull_with_basic_auth: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // bcrypt (cost 4) of "pw" for user "berth".
    let reg = start_registry(tmp.path(), Some("berth:$2b$04$YHt/69jGhOjqOBeNMD3GnOoDR0/tsyAnXgCIvLeQmV4o4kHIpD0IK"));
    let port = reg.port;
    let pushed = push_images_as(port, &OciAuth::Basic("berth".into(), "pw".into())).await;
    let mut cfg = ImageConfig::default();
    cfg.insecure_registries.push(format!("127.0.0.1:{port}"));
    let state = Arc::new(crate::state::Store::open(&tmp.path().join("state")).unwrap());
    let images = ImageStore::open(tmp.path().join("images"), state, cfg).unwrap();
    let name = format!("127.0.0.1:{port}/test/img:1");
    match images.pull(&name, None).await {
        Err(ImageError::Unauthenticated { image, .. }) => assert_eq!(image, name),
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    let wrong = RegistryAuth { username: "berth".into(), password: "nope".into(), ..Default::default() };
    assert!(matches!(images.pull(&name, Some(wrong)).await, Err(ImageError::Unauthenticated { .. })));
    // CRI's `auth` field: base64("berth:pw").
    let auth = RegistryAuth { auth: "YmVydGg6cHc=".into(), ..Default::default() };
    let img = images.pull(&name, Some(auth)).await.unwrap();
    assert_eq!(img.id, pushed.config_digest);
    drop(reg);
}

/// Blob files of the registry's filesystem storage whose content starts with `magic`.
fn stored_blobs_starting_with(dir: &Path, magic: &[u8]) -> Vec<std::path::PathBuf> {
    let blobs = dir.join("data/docker/registry/v2/blobs/sha256");
    let mut out = Vec::new();
    for prefix in std::fs::read_dir(&blobs).unwrap() {
        for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let data = blob.unwrap().path().join("data");
            if std::fs::read(&data).map(|b| b.starts_with(magic)).unwrap_or(false) {
                out.push(data);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_a_corrupted_blob_fails_and_leaves_no_partial_layer() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping pull_of_a_corrupted_blob_fails_and_leaves_no_partial_layer: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(tmp.path(), None);
    let port = reg.port;
    push_images(port).await;
    // The registry serves what is on its disk: flip one byte inside the zstd layer's blob.
    let zstd_blobs = stored_blobs_starting_with(tmp.path(), &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(zstd_blobs.len(), 1, "{zstd_blobs:?}");
    let good = std::fs::read(&zstd_blobs[0]).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&zstd_blobs[0], &bad).unwrap();
    let digest = sha(&good);

    let mut cfg = ImageConfig::default();
    cfg.insecure_registries.push(format!("127.0.0.1:{port}"));
    let state = Arc::new(crate::state::Store::open(&tmp.path().join("state")).unwrap());
    let images = ImageStore::open(tmp.path().join("images"), state, cfg).unwrap();
    let name = format!("127.0.0.1:{port}/test/img:1");
    let err = images.pull(&name, None).await.expect_err("a corrupted layer blob fails the pull");
    let msg = err.to_string();
    eprintln!("corrupted blob: {msg}");
    assert!(msg.contains(&digest) || msg.contains(&digest[7..]), "the error names the layer: {msg}");
    assert!(images.list().unwrap().is_empty(), "no image recorded");
    let layers: Vec<String> = std::fs::read_dir(tmp.path().join("images/layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(layers.iter().all(|l| !l.contains(".tmp-")), "a partial layer was left: {layers:?}");
    assert!(layers.len() <= 1, "only the intact first layer may stay (recorded, reused by a retry): {layers:?}");

    // With the blob whole again, the same store pulls the image.
    std::fs::write(&zstd_blobs[0], &good).unwrap();
    let img = images.pull(&name, None).await.unwrap();
    assert_eq!(images.layer_dirs(&img).unwrap().len(), 2);
    drop(reg);
}
