//! Unit tests of layer unpacking: tars built in memory, applied to temp dirs.

use super::*;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use tar::EntryType;

struct E<'a> {
    path: &'a str,
    kind: EntryType,
    data: &'a [u8],
    link: Option<&'a str>,
    mode: u32,
    uid: u64,
}

fn e<'a>(path: &'a str, kind: EntryType) -> E<'a> {
    E { path, kind, data: b"", link: None, mode: if kind == EntryType::Directory { 0o755 } else { 0o644 }, uid: 0 }
}

/// Builds a tar, writing names raw so hostile paths survive (tar's builder refuses them).
fn build(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..en.path.len()].copy_from_slice(en.path.as_bytes());
        h.set_entry_type(en.kind);
        h.set_size(en.data.len() as u64);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.uid);
        h.set_mtime(1_000_000);
        if let Some(l) = en.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn apply(entries: &[E]) -> (tempfile::TempDir, Result<(), ImageError>) {
    let d = tempfile::tempdir().unwrap();
    let r = apply_tar(build(entries).as_slice(), d.path(), "sha256:test");
    (d, r)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn applies_files_dirs_symlinks_hardlinks() {
    let (d, r) = apply(&[
        e("./etc/", EntryType::Directory),
        E { data: b"hi\n", mode: 0o4755, uid: 1000, ..e("/etc/hello", EntryType::Regular) },
        E { link: Some("/bin/busybox"), ..e("bin/sh", EntryType::Symlink) },
        E { link: Some("./etc/hello"), ..e("etc/hello2", EntryType::Link) },
        E { data: b"new", ..e("etc/replaced", EntryType::Regular) },
        E { data: b"newer", ..e("etc/replaced", EntryType::Regular) },
        e("run/fifo", EntryType::Fifo),
    ]);
    r.unwrap();
    let p = d.path();
    assert_eq!(std::fs::read(p.join("etc/hello")).unwrap(), b"hi\n");
    assert_eq!(std::fs::read(p.join("etc/replaced")).unwrap(), b"newer");
    let m = std::fs::metadata(p.join("etc/hello")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_000_000);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
    assert_eq!(m.ino(), std::fs::metadata(p.join("etc/hello2")).unwrap().ino());
    assert_eq!(std::fs::read_link(p.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
    assert_eq!(std::fs::metadata(p.join("etc")).unwrap().mtime(), 1_000_000);
    assert!(std::fs::symlink_metadata(p.join("run/fifo")).unwrap().file_type().is_fifo());
    // Parents created implicitly are plain 0755 directories.
    assert_eq!(std::fs::metadata(p.join("bin")).unwrap().mode() & 0o777, 0o755);
}

#[test]
fn translates_whiteouts_and_opaque_dirs() {
    if !is_root() {
        eprintln!("skipping translates_whiteouts_and_opaque_dirs: needs root (mknod, trusted xattrs)");
        return;
    }
    let (d, r) = apply(&[
        e("dir/", EntryType::Directory),
        e("dir/.wh..wh..opq", EntryType::Regular),
        e("dir/.wh.gone", EntryType::Regular),
        e(".wh.top", EntryType::Regular),
        e("sub/.wh..wh.plnk", EntryType::Regular),
    ]);
    r.unwrap();
    let p = d.path();
    for w in ["dir/gone", "top"] {
        let m = std::fs::symlink_metadata(p.join(w)).unwrap();
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!(m.rdev(), 0, "{w}");
        // The `.wh.` entry's mtime, not the unpack's: an export gives the same bytes later.
        assert_eq!(m.mtime(), 1_000_000, "{w}");
    }
    assert_eq!(whiteout::lgetxattr(&p.join("dir"), whiteout::OPAQUE_XATTR).unwrap().as_deref(), Some(&b"y"[..]));
    assert!(!p.join("dir/.wh..wh..opq").exists());
    assert!(!p.join("sub/.wh..wh.plnk").exists());
}

#[test]
fn keeps_pax_xattrs() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.berth", &b"v1"[..])]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let d = tempfile::tempdir().unwrap();
    apply_tar(b.into_inner().unwrap().as_slice(), d.path(), "l").unwrap();
    assert_eq!(whiteout::lgetxattr(&d.path().join("f"), "user.berth").unwrap().as_deref(), Some(&b"v1"[..]));
}

fn expect_hostile(entries: &[E], entry: &str, needle: &str) {
    let outside = tempfile::tempdir().unwrap();
    let (d, r) = apply(entries);
    match r {
        Err(ImageError::Unpack { layer, entry: got, message }) => {
            assert_eq!(layer, "sha256:test");
            assert_eq!(got, entry, "{message}");
            assert!(message.contains(needle), "{message}");
        }
        other => panic!("expected an unpack error for {entry}, got {other:?}"),
    }
    drop(outside);
    drop(d);
}

#[test]
fn rejects_dotdot_components() {
    expect_hostile(&[E { data: b"x", ..e("../evil", EntryType::Regular) }], "../evil", "'..'");
    expect_hostile(&[E { data: b"x", ..e("a/../../evil", EntryType::Regular) }], "a/../../evil", "'..'");
    expect_hostile(&[E { data: b"x", ..e("/../evil", EntryType::Regular) }], "/../evil", "'..'");
}

#[test]
fn rejects_parent_symlink_escaping_the_layer() {
    expect_hostile(
        &[E { link: Some("../../.."), ..e("esc", EntryType::Symlink) }, E { data: b"x", ..e("esc/file", EntryType::Regular) }],
        "esc/file",
        "outside the layer",
    );
    expect_hostile(
        &[E { link: Some("/a/../../x"), ..e("esc", EntryType::Symlink) }, E { data: b"x", ..e("esc/file", EntryType::Regular) }],
        "esc/file",
        "outside the layer",
    );
}

#[test]
fn parent_symlinks_inside_the_layer_are_rooted_at_it() {
    let (d, r) = apply(&[
        E { link: Some("/etc"), ..e("abs", EntryType::Symlink) },
        E { data: b"in", ..e("abs/berth-test-file", EntryType::Regular) },
        E { link: Some("abs"), ..e("rel", EntryType::Symlink) },
        E { data: b"in2", ..e("rel/second", EntryType::Regular) },
    ]);
    r.unwrap();
    assert_eq!(std::fs::read(d.path().join("etc/berth-test-file")).unwrap(), b"in");
    assert_eq!(std::fs::read(d.path().join("etc/second")).unwrap(), b"in2");
    assert!(!Path::new("/etc/berth-test-file").exists());
}

/// Parents are resolved once per run of entries in one directory; an entry that replaces a
/// directory already used (by a symlink leaving the layer, by a file) makes the next entry under
/// it resolve again, and fail, instead of writing through the old resolution.
#[test]
fn a_parent_replaced_after_use_is_resolved_again() {
    let outside = tempfile::tempdir().unwrap();
    let up = format!("../../../../../../../..{}", outside.path().display());
    expect_hostile(
        &[
            e("a/", EntryType::Directory),
            E { data: b"x", ..e("a/x", EntryType::Regular) },
            E { link: Some(&up), ..e("a", EntryType::Symlink) },
            E { data: b"y", ..e("a/y", EntryType::Regular) },
        ],
        "a/y",
        "outside the layer",
    );
    assert!(!outside.path().join("y").exists());
    expect_hostile(
        &[
            e("a/", EntryType::Directory),
            E { data: b"x", ..e("a/x", EntryType::Regular) },
            E { data: b"now a file", ..e("a", EntryType::Regular) },
            E { data: b"y", ..e("a/y", EntryType::Regular) },
        ],
        "a/y",
        "not a directory",
    );
    // The entry that changes the resolution lies inside the cached directory: `s` resolves
    // through `e/f`, which `s/f` replaces while `s` is the cached parent.
    expect_hostile(
        &[
            e("e/", EntryType::Directory),
            e("e/f/", EntryType::Directory),
            E { link: Some("e/f/.."), ..e("s", EntryType::Symlink) },
            E { data: b"x", ..e("s/x", EntryType::Regular) },
            E { link: Some("/../.."), ..e("s/f", EntryType::Symlink) },
            E { data: b"z", ..e("s/z", EntryType::Regular) },
        ],
        "s/z",
        "outside the layer",
    );
}

#[test]
fn never_writes_through_a_final_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = victim.to_str().unwrap().to_string();
    let (d, r) = apply(&[E { link: Some(&link), ..e("f", EntryType::Symlink) }, E { data: b"evil", ..e("f", EntryType::Regular) }]);
    r.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"evil");
}

#[test]
fn rejects_hardlinks_outside_the_layer() {
    expect_hostile(&[E { link: Some("../../etc/passwd"), ..e("h", EntryType::Link) }], "h", "'..'");
    expect_hostile(&[E { link: Some("/etc/passwd"), ..e("h", EntryType::Link) }], "h", "hardlink target");
    expect_hostile(
        &[E { link: Some("/.."), ..e("up", EntryType::Symlink) }, E { link: Some("up/etc/passwd"), ..e("h", EntryType::Link) }],
        "h",
        "outside the layer",
    );
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[test]
fn unpacks_gzip_zstd_and_plain_blobs_measuring_digests() {
    let tar = build(&[E { data: b"content", ..e("f", EntryType::Regular) }]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
    for (blob, kind) in [(&tar, Compression::None), (&gz, Compression::Gzip), (&zst, Compression::Zstd)] {
        assert_eq!(detect_compression(blob), kind);
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("blob");
        std::fs::write(&file, blob).unwrap();
        let dest = d.path().join("diff");
        std::fs::create_dir(&dest).unwrap();
        let u = unpack_blob_file(&file, &dest, "l").unwrap();
        assert_eq!(u.digest, sha(blob), "{kind:?}");
        assert_eq!(u.diff_id, sha(&tar), "{kind:?}");
        assert_eq!(u.compressed_size, blob.len() as u64);
        assert_eq!(u.uncompressed_size, tar.len() as u64);
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"content");
    }
}

#[test]
fn a_layer_past_its_budget_stops_and_says_so() {
    let entries = [
        E { data: &[7u8; 1000], ..e("a", EntryType::Regular) },
        e("d/", EntryType::Directory),
        E { data: &[7u8; 1000], ..e("d/b", EntryType::Regular) },
    ];
    let tar = build(&entries);
    let exact = 3 * ENTRY_COST + 2000;
    let d = tempfile::tempdir().unwrap();
    apply_tar_within(tar.as_slice(), d.path(), "l", exact).expect("a layer of exactly its budget");
    assert_eq!(std::fs::read(d.path().join("d/b")).unwrap().len(), 1000);
    for budget in [exact - 1, 2 * ENTRY_COST + 1000, ENTRY_COST - 1] {
        let d = tempfile::tempdir().unwrap();
        let err = apply_tar_within(tar.as_slice(), d.path(), "l", budget).expect_err("past the budget").to_string();
        assert!(err.contains(&format!("unpacks to more than {budget} bytes")), "{budget}: {err}");
        let written: u64 = walk_sizes(d.path());
        assert!(written <= budget + 1, "{budget}: {written} bytes written");
    }
}

/// Bytes of the regular files under `dir`.
fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_sizes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}
