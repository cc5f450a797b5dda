//! `berth image import` (issue #13 item 1), run as the real binary against the daemon under
//! test: archives built here from the suite's busybox layer plus a marker layer, then checked
//! through the CRI ImageService and by running a container from the imported image (berth only).

use super::util::check;
use crate::ctx::{skip, spec, Ctx};
use crate::daemon::{berth_binary, TargetKind};
use crate::imagekit::{compress, image_config, Compression, Layer, TarBuilder, PATH_ENV};
use crate::registry::sha256_digest;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::io::Write;
use std::path::Path;

/// The marker file's content (`/imported`) in the imported images.
pub const MARKER: &str = "imported by berth image import";

/// A tar (the archive itself) of `(name, bytes)` regular files, in order.
fn tar_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, *data)?;
    }
    Ok(b.into_inner()?)
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// The suite's busybox tree as a gzip'd base layer, and a plain layer adding `/imported`.
fn layers() -> Result<(Layer, Layer)> {
    let base = compress(crate::images::busybox_tar()?, Compression::Gzip, true)?;
    let mut t = TarBuilder::new();
    t.file("imported", 0o644, format!("{MARKER}\n").as_bytes())?;
    Ok((base, compress(t.finish()?, Compression::None, false)?))
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A docker-archive as `docker save` (before 25) writes it: layers first, then the config and
/// `manifest.json` naming the image by `tags`: the suite's busybox as a gzip'd layer plus a
/// layer adding `/imported` ([`MARKER`]). Returns (archive, image ID). Also used by
/// `node-image-check`.
pub fn docker_archive(tags: &[&str]) -> Result<(Vec<u8>, String)> {
    let (base, marker) = layers()?;
    let cfg = image_config(goarch(), &[&base, &marker], serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"] }));
    let id = sha256_digest(&cfg);
    let (lb, lm) = (format!("{}/layer.tar", hex(&base.diff_id)), format!("{}/layer.tar", hex(&marker.diff_id)));
    let cfg_name = format!("{}.json", hex(&id));
    let manifest = serde_json::to_vec(&serde_json::json!([{ "Config": cfg_name, "RepoTags": tags, "Layers": [lb, lm] }]))?;
    let archive = tar_of(&[(&lb, &base.blob), (&lm, &marker.blob), (&cfg_name, &cfg), ("manifest.json", &manifest)])?;
    Ok((archive, id))
}

/// A gzip'd OCI image layout holding one image named `name` (`io.containerd.image.name`).
/// Returns (archive, image ID).
fn oci_archive(name: &str) -> Result<(Vec<u8>, String)> {
    let (base, marker) = layers()?;
    let cfg = image_config(goarch(), &[&base, &marker], serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"] }));
    let desc = |mt: &str, b: &[u8]| serde_json::json!({ "mediaType": mt, "digest": sha256_digest(b), "size": b.len() });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::imagekit::OCI_MANIFEST,
        "config": desc(crate::imagekit::OCI_CONFIG, &cfg),
        "layers": [desc(base.media_type, &base.blob), desc(marker.media_type, &marker.blob)],
    }))?;
    let mut top = desc(crate::imagekit::OCI_MANIFEST, &manifest);
    top["annotations"] = serde_json::json!({ "io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1" });
    let index = serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "manifests": [top] }))?;
    let blob = |b: &[u8]| format!("blobs/sha256/{}", hex(&sha256_digest(b)));
    let files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        (blob(&base.blob), &base.blob),
        (blob(&marker.blob), &marker.blob),
        (blob(&cfg), &cfg),
        (blob(&manifest), &manifest),
        ("index.json".into(), &index),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_of(&refs)?)?;
    Ok((gz.finish()?, sha256_digest(&cfg)))
}

/// Runs `berth image import --config <tmp>/berth.toml ARCHIVE` (`stdin` fed to it when given,
/// with `-` as the archive); returns (success, stdout, stderr).
fn berth_import(ctx: &Ctx, archive: &Path, stdin: bool) -> Result<(bool, String, String)> {
    let bin = berth_binary();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["image", "import", "--config"]).arg(ctx.tmp.join("berth.toml")).env("RUST_BACKTRACE", "0");
    if stdin {
        cmd.arg("-").stdin(std::fs::File::open(archive)?);
    } else {
        cmd.arg(archive).stdin(std::process::Stdio::null());
    }
    let out = cmd.output().with_context(|| format!("running {} image import {}", bin.display(), archive.display()))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

async fn images(ctx: &Ctx) -> Result<Vec<cri::Image>> {
    Ok(ctx.img().list_images(cri::ListImagesRequest { filter: None }).await.context("ListImages")?.into_inner().images)
}

async fn image_ids(ctx: &Ctx) -> Result<Vec<String>> {
    let mut ids: Vec<String> = images(ctx).await?.into_iter().map(|i| i.id).collect();
    ids.sort();
    Ok(ids)
}

/// ImageStatus of `name` has ID `id` and carries `name` among its tags; then a container from
/// `name` prints the marker file.
async fn check_imported(ctx: &Ctx, name: &str, id: &str) -> Result<()> {
    let st = ctx
        .img()
        .image_status(cri::ImageStatusRequest { image: Some(spec(name)), verbose: false })
        .await
        .with_context(|| format!("ImageStatus {name}"))?
        .into_inner()
        .image
        .with_context(|| format!("ImageStatus {name}: no image after the import"))?;
    check(st.id == id && st.repo_tags.iter().any(|t| t == name), || {
        format!("ImageStatus {name}: id {} tags {:?}, expected {id}", st.id, st.repo_tags)
    })?;
    let (pod, cst, lines) = super::util::run_to_exit(ctx, "imported", name, &["cat", "/imported"], 1).await?;
    ctx.remove_pod(&pod.id).await?;
    let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    check(cst.exit_code == 0 && got == [MARKER], || format!("`cat /imported` in {name}: exit {} output {got:?}", cst.exit_code))
}

async fn remove_image(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.img().remove_image(cri::RemoveImageRequest { image: Some(spec(id)) }).await.with_context(|| format!("RemoveImage {id}"))?;
    Ok(())
}

/// With the daemon running: a bad archive (manifest.json not JSON) is refused with a message
/// naming it and changes no image; a docker-archive with two tags, read from stdin, is imported
/// through the daemon's inspect socket, ListImages/ImageStatus show both tags, and a container runs from it.
pub async fn through_daemon(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("`berth image import` is berth's");
    }
    let before = image_ids(ctx).await?;
    let bad = ctx.tmp.join("import-bad.tar");
    std::fs::write(&bad, tar_of(&[("l.tar", b"x"), ("manifest.json", b"{not json")])?)?;
    let (ok, _, err) = berth_import(ctx, &bad, false)?;
    check(!ok && err.contains("manifest.json") && err.contains("import-bad.tar"), || {
        format!("importing a bad archive: success {ok}, stderr {err:?}; expected a failure naming the file and manifest.json")
    })?;
    check(image_ids(ctx).await? == before, || "the bad archive changed the image list".into())?;

    let (one, two) = ("import.example/daemon:one", "import.example/daemon:two");
    let (archive, id) = docker_archive(&[one, two])?;
    let file = ctx.tmp.join("import-daemon.tar");
    std::fs::write(&file, archive)?;
    // From stdin: streamed to the daemon chunked (a file goes with its Content-Length).
    let (ok, out, err) = berth_import(ctx, &file, true)?;
    check(ok && out.contains(&id) && !err.contains("directly"), || {
        format!("berth image import through the daemon: success {ok}, stdout {out:?}, stderr {err:?}")
    })?;
    let tags: Vec<String> = images(ctx).await?.into_iter().filter(|i| i.id == id).flat_map(|i| i.repo_tags).collect();
    check(tags.contains(&one.to_string()) && tags.contains(&two.to_string()), || format!("ListImages: image {id} has tags {tags:?}"))?;
    let r = check_imported(ctx, two, &id).await;
    remove_image(ctx, &id).await?;
    r
}

/// With the daemon stopped (a node image being built): a gzip'd OCI layout read from stdin is
/// imported straight into the store; the daemon, started again, serves the image and runs it.
pub async fn daemon_stopped(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth || !ctx.can_restart() {
        return skip("needs a berth the harness can stop");
    }
    let name = "import.example/offline:1";
    let (archive, id) = oci_archive(name)?;
    let file = ctx.tmp.join("import-offline.tar.gz");
    std::fs::write(&file, archive)?;
    ctx.stop_daemon().await?;
    let imported = berth_import(ctx, &file, true);
    ctx.start_daemon().await.context("starting the daemon after the import")?;
    let (ok, out, err) = imported?;
    check(ok && out.contains(&id) && out.contains(name) && err.contains("directly"), || {
        format!("berth image import (daemon stopped, straight into the store): success {ok}, stdout {out:?}, stderr {err:?}")
    })?;
    let r = check_imported(ctx, name, &id).await;
    remove_image(ctx, &id).await?;
    r
}

/// Runs `berth image export --config <tmp>/berth.toml -o OUTPUT IMAGES...`; returns (success,
/// stdout, stderr).
fn berth_export(ctx: &Ctx, output: &Path, images: &[&str]) -> Result<(bool, String, String)> {
    let bin = crate::daemon::berth_binary();
    let out = std::process::Command::new(&bin)
        .args(["image", "export", "--config"])
        .arg(ctx.tmp.join("berth.toml"))
        .arg("-o")
        .arg(output)
        .args(images)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} image export", bin.display()))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// `berth image export` through the running daemon writes a docker-archive of an image; an
/// unknown image is refused by name and leaves no file; the archive, imported back after a
/// RemoveImage, gives the image under its name and a container runs from it. With the daemon
/// stopped, the export reads the store directly and writes the same bytes.
pub async fn export_round_trip(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("`berth image export` is berth's");
    }
    let name = "import.example/export:1";
    let (archive, _) = docker_archive(&[name])?;
    let file = ctx.tmp.join("export-src.tar");
    std::fs::write(&file, archive)?;
    let (ok, _, err) = berth_import(ctx, &file, false)?;
    check(ok, || format!("importing the image to export: {err}"))?;

    let missing = ctx.tmp.join("export-missing.tar");
    let (ok, _, err) = berth_export(ctx, &missing, &["import.example/nosuch:1"])?;
    check(!ok && err.contains("import.example/nosuch:1") && !missing.exists(), || {
        format!("exporting an unknown image: success {ok}, stderr {err:?}, file left {}", missing.exists())
    })?;

    let out = ctx.tmp.join("export-out.tar");
    let (ok, stdout, err) = berth_export(ctx, &out, &[name])?;
    check(ok && stdout.contains("exported") && out.is_file(), || {
        format!("berth image export: success {ok}, stdout {stdout:?}, stderr {err:?}")
    })?;
    // `<output>: exported sha256:<id> [(in the store: ...)] <names>`
    let id = stdout.split_whitespace().find(|w| w.starts_with("sha256:")).context("no image ID in the export's output")?.to_string();
    let exported = std::fs::read(&out)?;
    let stored: Vec<String> = images(ctx).await?.into_iter().filter(|i| i.repo_tags.iter().any(|t| t == name)).map(|i| i.id).collect();
    for s in &stored {
        remove_image(ctx, s).await?;
    }

    let (ok, imported, err) = berth_import(ctx, &out, false)?;
    check(ok && imported.contains(&id), || format!("importing the exported archive: success {ok}, stdout {imported:?}, stderr {err:?}"))?;
    let r = check_imported(ctx, name, &id).await;

    let stopped = if r.is_ok() && ctx.can_restart() {
        let again = ctx.tmp.join("export-offline.tar");
        ctx.stop_daemon().await?;
        let res = berth_export(ctx, &again, &[name]);
        ctx.start_daemon().await.context("starting the daemon after the export")?;
        let (ok, _, err) = res?;
        let same = again.is_file() && std::fs::read(&again)? == exported;
        let _ = std::fs::remove_file(&again);
        check(ok && same, || format!("export with the daemon stopped: success {ok}, same bytes {same}, stderr {err:?}"))
    } else {
        Ok(())
    };
    remove_image(ctx, &id).await?;
    for f in [&file, &out] {
        let _ = std::fs::remove_file(f);
    }
    r.and(stopped)
}
