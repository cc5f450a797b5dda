//! [`super::ImageStore::import`] on real archives built here with the `tar` crate: docker-archive
//! (legacy and docker 25+ names, symlinked repeated layers), OCI image layout with a nested
//! image index, gzip'd archives, and bad archives that must leave nothing behind; and
//! [`super::ImageStore::export`] round trips through import.

use super::*;
use crate::config::ImageConfig;
use crate::state::{Store, IMAGES, LAYERS};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn header(path: &str, kind: tar::EntryType, size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    // Bypass set_path's own `..` refusal: hostile names must reach the reader.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    h
}

/// A tar of `(path, content)` files (a trailing `/` makes a directory) and `(path, "->target")`
/// symlinks.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        if path.ends_with('/') {
            b.append(&header(path, tar::EntryType::Directory, 0, 0o755), &[][..]).unwrap();
        } else if let Some(target) = data.strip_prefix(b"->") {
            let mut h = header(path, tar::EntryType::Symlink, 0, 0o777);
            h.set_link_name(std::str::from_utf8(target).unwrap()).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        } else {
            b.append(&header(path, tar::EntryType::Regular, data.len(), 0o644), *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn config(diff_ids: &[String], cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Plain layer tars for the tests.
struct Layers {
    base: Vec<u8>,
    one: Vec<u8>,
    two: Vec<u8>,
}

fn layers() -> Layers {
    Layers {
        base: tar_of(&[("etc/", b""), ("etc/os-release", b"base\n"), ("bin/", b"")]),
        one: tar_of(&[("one.txt", b"one\n")]),
        two: tar_of(&[("two/", b""), ("two/file", b"two\n")]),
    }
}

/// What the store holds: image IDs, layer records, layer dirs, config blobs, tmp entries.
#[derive(Debug, PartialEq)]
struct Snapshot {
    images: Vec<String>,
    layer_records: Vec<String>,
    layer_dirs: Vec<String>,
    configs: Vec<String>,
    tmp: Vec<String>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    store: Arc<Store>,
    images: ImageStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = Arc::new(Store::open(&root).unwrap());
    let images = ImageStore::open(root.join("images"), store.clone(), ImageConfig::default()).unwrap();
    Fixture { _dir: dir, root, store, images }
}

impl Fixture {
    async fn import(&self, archive: Vec<u8>) -> Result<Vec<Image>, ImageError> {
        self.images.import(std::io::Cursor::new(archive), "test.tar").await
    }

    fn names(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("images").join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            images: self.store.list::<Image>(IMAGES).unwrap().into_iter().map(|(k, _)| k).collect(),
            layer_records: self.store.list::<LayerRecord>(LAYERS).unwrap().into_iter().map(|(k, _)| k).collect(),
            layer_dirs: self.names("layers"),
            configs: self.names("configs"),
            tmp: self.names("tmp"),
        }
    }
}

/// A legacy docker-archive (`docker save` before 25): `<id>/layer.tar`, `<hex>.json` configs,
/// layers before manifest.json, and image B's base layer a symlink to image A's.
fn docker_two_images(l: &Layers) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let cfg_a = config(&[sha(&l.base), sha(&l.one)], "a");
    let cfg_b = config(&[sha(&l.base), sha(&l.two)], "b");
    let (ca, cb) = (format!("{}.json", hex(&cfg_a)), format!("{}.json", hex(&cfg_b)));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": ca, "RepoTags": ["a:1", "example.com/team/a:latest"], "Layers": ["base/layer.tar", "one/layer.tar"]},
        {"Config": cb, "RepoTags": ["b:1"], "Layers": ["b-base/layer.tar", "two/layer.tar"]},
    ]))
    .unwrap();
    let gz_one = gzip(&l.one);
    let archive = tar_of(&[
        ("base/", b""),
        ("base/layer.tar", &l.base),
        ("one/", b""),
        ("one/layer.tar", &gz_one),
        ("b-base/", b""),
        ("b-base/layer.tar", b"->../base/layer.tar"),
        ("two/", b""),
        ("two/layer.tar", &l.two),
        (&ca, &cfg_a),
        (&cb, &cfg_b),
        ("manifest.json", &manifest),
        ("repositories", b"{}"),
    ]);
    (archive, cfg_a, cfg_b)
}

#[tokio::test]
async fn docker_archive_two_images_share_the_base_layer() {
    let f = fixture();
    let l = layers();
    let (archive, cfg_a, cfg_b) = docker_two_images(&l);
    let got = f.import(archive.clone()).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, sha(&cfg_a));
    assert_eq!(got[0].repo_tags, vec!["docker.io/library/a:1", "example.com/team/a:latest"]);
    assert_eq!(got[0].config.cmd, vec!["a"]);
    assert_eq!(got[1].repo_tags, vec!["docker.io/library/b:1"]);
    assert_eq!(got[0].chain_ids[0], got[1].chain_ids[0], "the base layer is shared by chain ID");
    let snap = f.snapshot();
    assert_eq!(snap.images.len(), 2);
    assert_eq!(snap.layer_records.len(), 3, "base, one, two: {snap:?}");
    assert_eq!(snap.layer_dirs.len(), 3);
    let mut want = vec![hex(&cfg_a), hex(&cfg_b)];
    want.sort();
    assert_eq!(snap.configs, want);
    assert!(snap.tmp.is_empty(), "tmp: {snap:?}");
    let dirs = f.images.layer_dirs(&got[0]).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("etc/os-release")).unwrap(), b"base\n");
    assert_eq!(std::fs::read(dirs[1].join("one.txt")).unwrap(), b"one\n");
    assert_eq!(f.images.config_blob(&got[1].id).unwrap().unwrap(), cfg_b);
    assert_eq!(f.images.resolve("b:1").unwrap().unwrap().id, sha(&cfg_b));

    // Again: the same images, nothing unpacked again (layer dirs keep their inodes).
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&dirs[0]);
    f.import(archive).await.unwrap();
    assert_eq!(f.snapshot().layer_records.len(), 3);
    assert_eq!(ino(&dirs[0]), before, "the base layer was unpacked again");

    // A third image named a:1 takes the tag from the first.
    let cfg_c = config(&[sha(&l.base)], "c");
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]}])).unwrap();
    let got = f.import(tar_of(&[("l.tar", &l.base), ("c.json", &cfg_c), ("manifest.json", &manifest)])).await.unwrap();
    assert_eq!(got[0].repo_tags, vec!["docker.io/library/a:1"]);
    let a = f.images.resolve(&sha(&cfg_a)).unwrap().unwrap();
    assert_eq!(a.repo_tags, vec!["example.com/team/a:latest"], "a:1 moved to the new image");
    assert_eq!(f.snapshot().layer_records.len(), 3, "image c reuses the base layer");

    // Removing an image removes its config blob.
    f.images.remove(&sha(&cfg_c)).await.unwrap();
    assert!(f.images.config_blob(&sha(&cfg_c)).unwrap().is_none());
    assert!(!f.snapshot().configs.contains(&hex(&cfg_c)));
}

/// An OCI image layout (docker 25+ names its blobs this way too) with `index.json` pointing
/// at an image index for amd64 and arm64 (the arm64 blobs are absent, as `docker save` leaves
/// them); the whole archive gzip'd.
fn oci_layout(l: &Layers, names: serde_json::Value) -> (Vec<u8>, Vec<u8>) {
    let (os, arch) = archive::host_platform();
    let gz_base = gzip(&l.base);
    let cfg = config(&[sha(&l.base), sha(&l.two)], "oci");
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha(b), "size": b.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &cfg),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &gz_base), desc("application/vnd.oci.image.layer.v1.tar", &l.two)],
    }))
    .unwrap();
    let mut m_desc = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    m_desc["platform"] = serde_json::json!({"os": os, "architecture": arch});
    let other = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "e".repeat(64)), "size": 10, "platform": {"os": "linux", "architecture": "s390x-none"}});
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [other, m_desc]}),
    )
    .unwrap();
    let mut top = desc("application/vnd.oci.image.index.v1+json", &index);
    top["annotations"] = names;
    let index_json = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]})).unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", hex(b));
    let archive = tar_of(&[
        ("./", b""),
        ("./oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("./blobs/", b""),
        ("./blobs/sha256/", b""),
        (&format!("./{}", blob(&gz_base)), &gz_base),
        (&format!("./{}", blob(&l.two)), &l.two),
        (&format!("./{}", blob(&cfg)), &cfg),
        (&format!("./{}", blob(&manifest)), &manifest),
        (&format!("./{}", blob(&index)), &index),
        ("./index.json", &index_json),
    ]);
    (gzip(&archive), cfg)
}

#[tokio::test]
async fn oci_layout_gzipped_with_a_nested_index() {
    let f = fixture();
    let l = layers();
    let names = serde_json::json!({"io.containerd.image.name": "registry.example/app:v1", "org.opencontainers.image.ref.name": "v1"});
    let (archive, cfg) = oci_layout(&l, names);
    let got = f.import(archive).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, sha(&cfg));
    assert_eq!(got[0].repo_tags, vec!["registry.example/app:v1"]);
    assert_eq!(got[0].media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(got[0].config.cmd, vec!["oci"]);
    let dirs = f.images.layer_dirs(&got[0]).unwrap();
    assert_eq!(std::fs::read(dirs[1].join("two/file")).unwrap(), b"two\n");
    assert_eq!(f.images.config_blob(&got[0].id).unwrap().unwrap(), cfg);
    assert!(f.snapshot().tmp.is_empty(), "tmp is empty");

    // A bare tag in ref.name names no repository: the image is kept by ID only.
    let f = fixture();
    let (archive, _) = oci_layout(&l, serde_json::json!({"org.opencontainers.image.ref.name": "latest"}));
    let got = f.import(archive).await.unwrap();
    assert!(got[0].repo_tags.is_empty(), "{:?}", got[0].repo_tags);
}

/// Imports `archive` into a store that already holds image `base:1` (the base layer), expects
/// an error containing every one of `want`, and checks nothing changed.
async fn refused(archive: Vec<u8>, want: &[&str]) {
    let f = fixture();
    let l = layers();
    let cfg = config(&[sha(&l.base)], "base");
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["base:1"], "Layers": ["l.tar"]}])).unwrap();
    f.import(tar_of(&[("l.tar", &l.base), ("c.json", &cfg), ("manifest.json", &manifest)])).await.unwrap();
    let before = f.snapshot();
    let err = f.import(archive).await.expect_err("a bad archive was imported").to_string();
    eprintln!("refused: {err}");
    for w in want {
        assert!(err.contains(w), "error {err:?} lacks {w:?}");
    }
    assert_eq!(f.snapshot(), before, "the bad archive left something behind ({err})");
    assert_eq!(f.images.resolve("base:1").unwrap().unwrap().id, sha(&cfg));
}

fn docker_one(layer_files: &[(&str, &[u8])], diff_ids: &[String], layer_names: &[&str]) -> Vec<u8> {
    let cfg = config(diff_ids, "x");
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["bad:1"], "Layers": layer_names}])).unwrap();
    let mut entries: Vec<(&str, &[u8])> = layer_files.to_vec();
    entries.push(("c.json", &cfg));
    entries.push(("manifest.json", &manifest));
    tar_of(&entries)
}

#[tokio::test]
async fn missing_layer_leaves_nothing() {
    let l = layers();
    let a = docker_one(&[("b.tar", &l.base)], &[sha(&l.base), sha(&l.one)], &["b.tar", "one/layer.tar"]);
    refused(a, &["test.tar", "layer one/layer.tar is not in the archive"]).await;
}

#[tokio::test]
async fn diff_id_mismatch_leaves_nothing() {
    // The second layer's diff ID is wrong: the first (new) layer is unpacked, then removed.
    let l = layers();
    let a = docker_one(&[("one.tar", &l.one), ("two.tar", &l.two)], &[sha(&l.one), sha(&l.base)], &["one.tar", "two.tar"]);
    refused(a, &["bad:1", "layer two.tar", "rootfs.diff_ids", &sha(&l.base), &sha(&l.two)]).await;
}

#[tokio::test]
async fn dotdot_entry_in_a_layer_leaves_nothing() {
    let l = layers();
    let evil = tar_of(&[("../escape", b"x")]);
    let a = docker_one(
        &[("base.tar", &l.base), ("one.tar", &l.one), ("evil.tar", &evil)],
        &[sha(&l.base), sha(&l.one), sha(&evil)],
        &["base.tar", "one.tar", "evil.tar"],
    );
    refused(a, &["layer evil.tar", "../escape", "'..'"]).await;
}

#[tokio::test]
async fn manifest_not_json_leaves_nothing() {
    let l = layers();
    refused(
        tar_of(&[("l.tar", &l.base), ("manifest.json", b"[{not json")]),
        &["test.tar", "manifest.json", "not a docker-archive manifest"],
    )
    .await;
}

#[tokio::test]
async fn unknown_layout_and_hostile_names_leave_nothing() {
    refused(tar_of(&[("hello.txt", b"hi")]), &["unknown layout", "manifest.json", "index.json"]).await;
    refused(tar_of(&[("../manifest.json", b"[]")]), &["../manifest.json", "'..'"]).await;
    refused(b"this is not a tar archive at all, not even gzip, just words and more words".repeat(20).to_vec(), &["test.tar"]).await;
    refused(Vec::new(), &["empty"]).await;
}

#[tokio::test]
async fn blob_digest_mismatch_leaves_nothing() {
    let l = layers();
    let (gz, _) = oci_layout(&l, serde_json::json!({"io.containerd.image.name": "x:1"}));
    // Corrupt the plain `two` layer blob in place (same size, other bytes).
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    let at = plain.windows(4).position(|w| w == b"two\n").unwrap();
    plain[at] = b'T';
    refused(plain, &["x:1", "layer blobs/sha256/", &sha(&l.two)]).await;
}

/// docker 25+ `docker save`: manifest.json names blobs of an OCI layout written beside it
/// (`index.json` too); manifest.json is what is read, and blob names are checked as digests.
#[tokio::test]
async fn docker25_archive_reads_manifest_json_and_checks_blob_names() {
    let f = fixture();
    let l = layers();
    let cfg = config(&[sha(&l.base), sha(&l.one)], "d25");
    let blob = |b: &[u8]| format!("blobs/sha256/{}", hex(b));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": blob(&cfg), "RepoTags": ["d25:1"], "Layers": [blob(&l.base), blob(&l.one)]},
    ]))
    .unwrap();
    let (b_base, b_one, b_cfg) = (blob(&l.base), blob(&l.one), blob(&cfg));
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let good = tar_of(&[
        ("blobs/", b""),
        ("blobs/sha256/", b""),
        (&b_base, &l.base),
        (&b_one, &l.one),
        (&b_cfg, &cfg),
        ("index.json", index),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("manifest.json", &manifest),
    ]);
    let got = f.import(good).await.unwrap();
    assert_eq!((got[0].id.as_str(), got[0].repo_tags.as_slice()), (sha(&cfg).as_str(), &["docker.io/library/d25:1".to_string()][..]));

    // The same names over other content: the blob name is its digest, so this is refused.
    let bad = tar_of(&[(&b_base, &l.base), (&b_one, &l.two), (&b_cfg, &cfg), ("manifest.json", &manifest)]);
    refused(bad, &["d25:1", &format!("layer {b_one}"), &sha(&l.one), &sha(&l.two)]).await;
}

/// A name that carries a digest may be a link to a file whose own name carries none, which is
/// spooled without hashing (docker's `<id>/layer.tar`, `c.json`): the digest is measured when
/// the name is checked, so a link over other content is still refused. The other content is
/// the same layer gzip'd differently: same diff ID, so only the name's digest tells them apart.
#[tokio::test]
async fn digest_named_link_to_an_unhashed_file_is_checked() {
    let f = fixture();
    let l = layers();
    let cfg = config(&[sha(&l.base)], "link");
    let good = gzip(&l.base);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&l.base).unwrap();
    let other = e.finish().unwrap();
    assert_ne!(good, other);
    let (cfg_name, layer_name) = (format!("{}.json", hex(&cfg)), format!("blobs/sha256/{}", hex(&good)));
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": cfg_name, "RepoTags": ["link:1"], "Layers": [layer_name]}])).unwrap();
    let archive = |layer: &[u8]| {
        tar_of(&[
            ("l/layer.tar", layer),
            (&layer_name, b"->../../l/layer.tar"),
            ("c.json", &cfg),
            (&cfg_name, b"->c.json"),
            ("manifest.json", &manifest),
        ])
    };
    let got = f.import(archive(&good)).await.unwrap();
    assert_eq!(got[0].id, sha(&cfg));
    refused(archive(&other), &["link:1", &format!("layer {layer_name}"), &sha(&good), &sha(&other)]).await;
}

/// Files that look like layers are unpacked while the archive is read ([`super::early`]) and
/// adopted by the layers the manifests name. One file named at two depths (two chain IDs) ends
/// up in both layers; layer-looking files no manifest names, one of them hostile, are not an
/// error and leave nothing behind.
#[tokio::test]
async fn early_unpacks_are_adopted_or_discarded() {
    let f = fixture();
    let l = layers();
    let evil = tar_of(&[("../escape", b"x")]);
    let (cfg_a, cfg_b) = (config(&[sha(&l.one)], "a"), config(&[sha(&l.base), sha(&l.one)], "b"));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["one.tar"]},
        {"Config": "b.json", "RepoTags": ["b:1"], "Layers": ["base.tar", "one.tar"]},
    ]))
    .unwrap();
    let archive = tar_of(&[
        ("one.tar", &l.one),
        ("base.tar", &l.base),
        ("stray.tar", &l.two),
        ("evil.tar", &evil),
        ("a.json", &cfg_a),
        ("b.json", &cfg_b),
        ("manifest.json", &manifest),
    ]);
    let got = f.import(archive).await.unwrap();
    assert_eq!(got.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), [sha(&cfg_a), sha(&cfg_b)]);
    let s = f.snapshot();
    assert_eq!((s.layer_records.len(), s.layer_dirs.len()), (3, 3), "{s:?}");
    assert!(s.tmp.is_empty(), "{s:?}");
    for img in &got {
        let top = img.chain_ids.last().unwrap().strip_prefix("sha256:").unwrap();
        let file = f.root.join("images/layers").join(top).join("diff/one.txt");
        assert_eq!(std::fs::read(&file).unwrap(), b"one\n", "{}", file.display());
    }
}

/// A config blob without an image record (a crash between the two) is deleted on open.
#[tokio::test]
async fn orphan_config_blobs_go_on_open() {
    let f = fixture();
    let orphan = f.root.join("images/configs").join("f".repeat(64));
    std::fs::write(&orphan, b"{}").unwrap();
    let reopened = ImageStore::open(f.root.join("images"), f.store.clone(), ImageConfig::default()).unwrap();
    assert!(!orphan.exists());
    drop(reopened);
}

impl Fixture {
    async fn export(&self, refs: &[&str]) -> Result<(Vec<u8>, Vec<super::export::ExportedImage>), ImageError> {
        let (tx, rx) = std::sync::mpsc::channel();
        struct Sink(std::sync::mpsc::Sender<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        let exported = self.images.export(&refs, Sink(tx), "out.tar").await?;
        Ok((rx.try_iter().flatten().collect(), exported))
    }
}

/// An image whose upper layer deletes a file (`.wh.gone`) and makes a directory opaque
/// (`.wh..wh..opq`) goes out as a docker-archive and comes back into another store the same:
/// the whiteout is a 0:0 character device again and the directory opaque; its config and names
/// are kept; exporting it from the second store gives the same bytes. Needs root (whiteouts
/// are device nodes, the opaque mark a trusted xattr).
#[tokio::test]
async fn export_round_trips_through_import() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let base = tar_of(&[("etc/", b""), ("etc/os-release", b"base\n"), ("etc/gone", b"x"), ("opq/", b""), ("opq/old", b"old")]);
    let upper = tar_of(&[
        ("etc/", b""),
        ("etc/.wh.gone", b""),
        ("opq/", b""),
        ("opq/.wh..wh..opq", b""),
        ("opq/new", b"new"),
        ("link", b"->etc/os-release"),
    ]);
    let cfg = config(&[sha(&base), sha(&upper)], "a");
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l0.tar", "l1.tar"]}])).unwrap();
    let f = fixture();
    let orig = f.import(tar_of(&[("l0.tar", &base), ("l1.tar", &upper), ("c.json", &cfg), ("manifest.json", &manifest)])).await.unwrap();

    let (archive, exported) = f.export(&["a:1"]).await.unwrap();
    assert_eq!(exported[0].source_id, orig[0].id);
    assert_eq!(exported[0].repo_tags, ["docker.io/library/a:1"]);

    let g = fixture();
    let back = g.import(archive.clone()).await.unwrap();
    assert_eq!(back[0].id, exported[0].id, "the archive's config digest is the imported image's ID");
    assert_eq!(back[0].repo_tags, ["docker.io/library/a:1"]);
    assert_eq!(back[0].config.cmd, orig[0].config.cmd);
    let dirs = g.images.layer_dirs(&back[0]).unwrap();
    let gone = std::fs::symlink_metadata(dirs[1].join("etc/gone")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0, "the whiteout came back as a 0:0 device");
    assert_eq!(xattr::get(dirs[1].join("opq"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(dirs[1].join("opq/new")).unwrap(), b"new");
    assert_eq!(std::fs::read_link(dirs[1].join("link")).unwrap(), Path::new("etc/os-release"));

    let (again, _) = g.export(&["a:1"]).await.unwrap();
    assert!(again == archive, "a second export of the imported image differs from the first export");
    assert!(g.snapshot().tmp.is_empty() && f.snapshot().tmp.is_empty(), "export left files in tmp/");
}

/// An image the store lacks, or one whose config it did not keep, is refused by name.
#[tokio::test]
async fn export_refuses_what_it_cannot_write() {
    let l = layers();
    let f = fixture();
    let (archive, cfg_a, _) = docker_two_images(&l);
    f.import(archive).await.unwrap();
    let err = f.export(&["nosuch:1"]).await.unwrap_err().to_string();
    assert!(err.contains("nosuch:1") && err.contains("not in the store"), "{err}");
    std::fs::remove_file(f.root.join("images/configs").join(hex(&cfg_a))).unwrap();
    let err = f.export(&["a:1"]).await.unwrap_err().to_string();
    assert!(err.contains("config was not kept") && err.contains("pull it again"), "{err}");
}

/// A gzip'd tar of one file `name` of `mib` MiB of zeros, and its DiffID: a decompression
/// bomb, built as one gzip member per MiB (a multi-member stream, as `pigz` writes).
fn zero_bomb(name: &str, mib: usize) -> (Vec<u8>, String) {
    let head = header(name, tar::EntryType::Regular, mib << 20, 0o644);
    let zeros = vec![0u8; 1 << 20];
    let member = gzip(&zeros);
    let mut blob = gzip(head.as_bytes());
    let mut diff = Sha256::new();
    diff.update(head.as_bytes());
    for _ in 0..mib {
        blob.extend_from_slice(&member);
        diff.update(&zeros);
    }
    // The end-of-archive blocks.
    blob.extend_from_slice(&gzip(&[0u8; 1024]));
    diff.update([0u8; 1024]);
    (blob, format!("sha256:{}", hex::encode(diff.finalize())))
}

/// A layer that unpacks to more than its early-unpack budget (zeros compress a thousandfold)
/// is unpacked by the import instead, whole.
#[tokio::test]
async fn a_layer_past_the_early_budget_is_still_imported() {
    let f = fixture();
    let mib = (super::early::EARLY_FLOOR >> 20) as usize + 8;
    let (bomb, diff_id) = zero_bomb("zeros", mib);
    let a = docker_one(&[("z.tar.gz", &bomb)], &[diff_id], &["z.tar.gz"]);
    let got = f.import(a).await.unwrap();
    let top = got[0].chain_ids[0].strip_prefix("sha256:").unwrap();
    let file = f.root.join("images/layers").join(top).join("diff/zeros");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), (mib as u64) << 20);
    assert!(f.snapshot().tmp.is_empty());
}

/// Unmounts a test's tmpfs (lazily) when dropped, also on a failed assertion.
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Yields `bytes`, pausing once for `pause` after the first `at` of them (so that what those
/// bytes set off, e.g. an early unpack, has time to run before the rest is read).
struct PausingReader {
    bytes: std::io::Cursor<Vec<u8>>,
    at: u64,
    pause: std::time::Duration,
}

impl std::io::Read for PausingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.bytes.position();
        if pos == self.at {
            std::thread::sleep(self.pause);
        }
        let n = if pos < self.at { buf.len().min((self.at - pos) as usize) } else { buf.len() };
        self.bytes.read(&mut buf[..n])
    }
}

/// A decompression bomb that no manifest names, placed before a real layer, costs a valid
/// import at most its early-unpack budget, for as long as the early unpack runs: on a 48 MiB
/// disk, a 40 MiB bomb does not keep the 12 MiB layer after it from being spooled and
/// unpacked (it did, unpacked whole and kept until the import ended).
#[tokio::test]
async fn an_unreferenced_bomb_does_not_fill_the_disk() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=48m")).unwrap();
    let _guard = TmpfsGuard(dir.path().to_path_buf());
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let images = ImageStore::open(dir.path().join("images"), store.clone(), ImageConfig::default()).unwrap();
    let (bomb, _) = zero_bomb("zeros", 40);
    // 12 MiB that do not compress (xorshift), so the layer's spooled file is 12 MiB too.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..12 << 17)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let layer = tar_of(&[("noise", &noise)]);
    let (cfg, manifest) = (
        config(&[sha(&layer)], "a"),
        serde_json::to_vec(&serde_json::json!([{"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["layer.tar"]}])).unwrap(),
    );
    let archive = tar_of(&[("bomb/layer.tar", &bomb), ("layer.tar", &layer), ("a.json", &cfg), ("manifest.json", &manifest)]);
    // The bomb's entry: one header block and its data, padded to a block.
    let at = 512 + (bomb.len() as u64).div_ceil(512) * 512;
    let reader = PausingReader { bytes: std::io::Cursor::new(archive), at, pause: std::time::Duration::from_millis(1500) };
    let got = images.import(reader, "bomb.tar").await.expect("an unreferenced bomb failed a valid import");
    assert_eq!(got[0].id, sha(&cfg));
    let top = got[0].chain_ids[0].strip_prefix("sha256:").unwrap();
    assert_eq!(std::fs::read(dir.path().join("images/layers").join(top).join("diff/noise")).unwrap(), noise);
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("images/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}
