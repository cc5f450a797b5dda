//! Runtime info and ImageService cases.

use super::util::check;
use crate::ctx::{skip, spec, Ctx};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// Version: runtime_api_version "v1", a non-empty runtime_name.
pub async fn version(ctx: &Ctx) -> Result<()> {
    let v = ctx.rt().version(cri::VersionRequest { version: "v1".into() }).await.context("Version")?.into_inner();
    check(v.runtime_api_version == "v1", || format!("runtime_api_version {:?}, expected \"v1\"", v.runtime_api_version))?;
    check(!v.runtime_name.is_empty(), || "runtime_name is empty".into())?;
    eprintln!("note version: {} {} (api {})", v.runtime_name, v.runtime_version, v.runtime_api_version);
    Ok(())
}

/// Status: conditions RuntimeReady and NetworkReady are both true.
pub async fn status_ready(ctx: &Ctx) -> Result<()> {
    let s = ctx.rt().status(cri::StatusRequest { verbose: false }).await.context("Status")?.into_inner();
    let st = s.status.context("Status: no status in the reply")?;
    for want in ["RuntimeReady", "NetworkReady"] {
        let c = st
            .conditions
            .iter()
            .find(|c| c.r#type == want)
            .with_context(|| format!("Status: no condition {want} in {:?}", st.conditions))?;
        check(c.status, || format!("condition {want} is false: reason {:?} message {:?}", c.reason, c.message))?;
    }
    Ok(())
}

async fn status_of(ctx: &Ctx, image: &str) -> Result<Option<cri::Image>> {
    Ok(ctx
        .img()
        .image_status(cri::ImageStatusRequest { image: Some(spec(image)), verbose: false })
        .await
        .with_context(|| format!("ImageStatus {image}"))?
        .into_inner()
        .image)
}

async fn list(ctx: &Ctx) -> Result<Vec<cri::Image>> {
    Ok(ctx.img().list_images(cri::ListImagesRequest { filter: None }).await.context("ListImages")?.into_inner().images)
}

fn tags(imgs: &[cri::Image]) -> Vec<String> {
    imgs.iter().flat_map(|i| i.repo_tags.iter().cloned()).collect()
}

async fn pull_and_find(ctx: &Ctx, image: &str) -> Result<cri::Image> {
    let r = ctx.pull(image).await?;
    check(!r.is_empty(), || format!("PullImage {image}: empty image_ref"))?;
    let i = status_of(ctx, image).await?.with_context(|| format!("ImageStatus {image} after a successful pull: no image"))?;
    check(i.id.starts_with("sha256:") || r.starts_with("sha256:"), || {
        format!("image {image}: id {:?} / image_ref {r:?}, expected sha256:...", i.id)
    })?;
    Ok(i)
}

/// PullImage by tag, then ImageStatus finds it.
pub async fn pull_by_tag(ctx: &Ctx) -> Result<()> {
    let i = pull_and_find(ctx, &ctx.images.busybox).await?;
    check(i.repo_tags.contains(&ctx.images.busybox), || format!("repo_tags {:?} lack {}", i.repo_tags, ctx.images.busybox))
}

/// PullImage by digest (`busybox@sha256:...`).
pub async fn pull_by_digest(ctx: &Ctx) -> Result<()> {
    let r = format!("{}/busybox@{}", ctx.images.registry, ctx.images.busybox_digest);
    let i = pull_and_find(ctx, &r).await?;
    check(i.repo_digests.contains(&r), || format!("repo_digests {:?} lack {r}", i.repo_digests))
}

/// PullImage of `name:tag@digest` pulls the digest, does not give the image that tag (here a tag
/// the registry does not even have), and ImageStatus finds the image under the same reference
/// but not under the bare tag (issue #11; containerd and docker drop the tag of such a reference).
pub async fn pull_tag_and_digest(ctx: &Ctx) -> Result<()> {
    let bare_tag = format!("{}/busybox:no-such-tag", ctx.images.registry);
    let r = format!("{bare_tag}@{}", ctx.images.busybox_digest);
    let i = pull_and_find(ctx, &r).await?;
    let b = pull_and_find(ctx, &ctx.images.busybox).await?;
    check(i.id == b.id, || format!("{r} is image {}, expected busybox:latest's {}", i.id, b.id))?;
    check(!i.repo_tags.contains(&bare_tag), || {
        format!("repo_tags {:?} gained {bare_tag}: the tag of a digested reference must not name the image", i.repo_tags)
    })?;
    let by_tag = status_of(ctx, &bare_tag).await?;
    check(by_tag.is_none(), || format!("ImageStatus {bare_tag} found {:?}; the registry has no such tag", by_tag.map(|x| x.id)))
}

/// An image of 121 layers (busybox plus 120 one-file layers) starts and shows every layer: the
/// overlay's lower list is longer than one page of mount data (issue #11).
pub async fn many_layers_run(ctx: &Ctx) -> Result<()> {
    let cmd = ["sh", "-c", "ls /deep | wc -l; cat /deep/0 /deep/119"];
    let (pod, st, lines) = super::util::run_to_exit(ctx, "deep", &ctx.images.deep, &cmd, 3).await?;
    ctx.remove_pod(&pod.id).await?;
    let got: Vec<&str> = lines.iter().map(|l| l.text.trim()).collect();
    check(st.exit_code == 0 && got == ["120", "layer 0", "layer 119"], || {
        format!("exit {} and output {got:?}, expected 0 and [120, layer 0, layer 119]", st.exit_code)
    })
}

/// An image with no layer at all (a config only) starts: its root is an empty writable
/// directory, here given Debian's busybox and its libraries by read-only host mounts (issue #11).
pub async fn no_layers_run(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("scratch").await?;
    let r = async {
        // The image's Entrypoint is /bin/busybox: these are its arguments.
        let mut config = ctx.container_config("scratch", &ctx.images.scratch, &[]);
        config.args = ["sh", "-c", "echo scratch ok; echo made > /made && echo root writable"].iter().map(|s| s.to_string()).collect();
        for (host, inside) in [("/bin/busybox", "/bin/busybox"), ("/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"), ("/lib64", "/lib64")] {
            let host = std::fs::canonicalize(host)?;
            config.mounts.push(cri::Mount {
                host_path: host.display().to_string(),
                container_path: inside.into(),
                readonly: true,
                ..Default::default()
            });
        }
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .context("StartContainer of a layerless image")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let lines = super::util::read_log(&pod, &st, 2).await?;
        let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        check(st.exit_code == 0 && got == ["scratch ok", "root writable"], || format!("exit {} and output {got:?}", st.exit_code))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    r
}

/// PullImage of a Docker schema2 manifest.
pub async fn pull_docker_schema2(ctx: &Ctx) -> Result<()> {
    pull_and_find(ctx, &ctx.images.busybox_docker).await.map(|_| ())
}

/// PullImage through an OCI image index picks the linux/amd64 entry (same image as busybox:latest).
pub async fn pull_multiarch_index(ctx: &Ctx) -> Result<()> {
    let m = pull_and_find(ctx, &ctx.images.busybox_multiarch).await?;
    let b = pull_and_find(ctx, &ctx.images.busybox).await?;
    check(m.id == b.id, || format!("busybox:multiarch has id {}, expected the amd64 entry's image {}", m.id, b.id))
}

/// PullImage of a reference the registry lacks fails, and nothing is listed for it.
pub async fn pull_missing_image(ctx: &Ctx) -> Result<()> {
    let missing = &ctx.images.missing;
    match ctx.img().pull_image(cri::PullImageRequest { image: Some(spec(missing)), auth: None, sandbox_config: None }).await {
        Ok(r) => anyhow::bail!("PullImage {missing} succeeded with {:?}, expected an error", r.into_inner().image_ref),
        Err(s) => eprintln!("note pull_missing_image: code {:?}: {}", s.code(), s.message()),
    }
    let t = tags(&list(ctx).await?);
    check(!t.contains(missing), || format!("ListImages lists {missing} after a failed pull"))?;
    check(status_of(ctx, missing).await?.is_none(), || format!("ImageStatus {missing} returns an image after a failed pull"))
}

/// `registry.k8s.io/busybox:latest` is pulled through the configured local mirror.
pub async fn pull_through_k8s_mirror(ctx: &Ctx) -> Result<()> {
    if !ctx.has_k8s_mirror() {
        return skip("the harness did not configure a registry.k8s.io mirror for this endpoint");
    }
    let r = "registry.k8s.io/busybox:latest";
    let i = pull_and_find(ctx, r).await?;
    check(i.repo_tags.iter().any(|t| t == r), || format!("repo_tags {:?} lack {r}", i.repo_tags))
}

/// ListImages contains every pulled image's tag.
pub async fn list_images(ctx: &Ctx) -> Result<()> {
    let want = [&ctx.images.busybox, &ctx.images.busybox_docker, &ctx.images.user, &ctx.images.layers];
    for w in want {
        ctx.ensure_image(w).await?;
    }
    let t = tags(&list(ctx).await?);
    for w in want {
        check(t.contains(w), || format!("ListImages repo_tags {t:?} lack {w}"))?;
    }
    Ok(())
}

/// ImageStatus: id sha256:, repo_tags, repo_digests, size > 0.
pub async fn image_status_fields(ctx: &Ctx) -> Result<()> {
    let b = &ctx.images.busybox;
    ctx.ensure_image(b).await?;
    let i = status_of(ctx, b).await?.with_context(|| format!("ImageStatus {b}: no image"))?;
    check(i.id.starts_with("sha256:") && i.id.len() == 71, || format!("id {:?}, expected sha256:<64 hex>", i.id))?;
    check(i.repo_tags.contains(b), || format!("repo_tags {:?} lack {b}", i.repo_tags))?;
    let d = format!("{}/busybox@{}", ctx.images.registry, ctx.images.busybox_digest);
    check(i.repo_digests.contains(&d), || format!("repo_digests {:?} lack {d}", i.repo_digests))?;
    check(i.size > 0, || format!("size {}, expected > 0", i.size))?;
    // Lookup by id gives the same image.
    let by_id = status_of(ctx, &i.id).await?.with_context(|| format!("ImageStatus by id {}: no image", i.id))?;
    check(by_id.id == i.id, || format!("ImageStatus by id returned {}", by_id.id))
}

/// ImageStatus of the `user` image reports username "app" (config User "app").
pub async fn image_status_user(ctx: &Ctx) -> Result<()> {
    let u = &ctx.images.user;
    ctx.ensure_image(u).await?;
    let i = status_of(ctx, u).await?.with_context(|| format!("ImageStatus {u}: no image"))?;
    let uid = i.uid.as_ref().map(|v| v.value);
    check(i.username == "app" || uid == Some(1234), || format!("username {:?} uid {uid:?}, expected username \"app\"", i.username))
}

/// ImageStatus of an unknown image is Ok with no image (CRI: "If the image is not present, returns
/// a response with ImageStatusResponse.Image set to nil").
pub async fn image_status_missing(ctx: &Ctx) -> Result<()> {
    let m = &ctx.images.missing;
    check(status_of(ctx, m).await?.is_none(), || format!("ImageStatus {m} returned an image"))
}

async fn remove(ctx: &Ctx, image: &str) -> Result<()> {
    ctx.img().remove_image(cri::RemoveImageRequest { image: Some(spec(image)) }).await.with_context(|| format!("RemoveImage {image}"))?;
    Ok(())
}

/// RemoveImage by tag: the tag is gone from ImageStatus and ListImages.
pub async fn remove_image_by_tag(ctx: &Ctx) -> Result<()> {
    let d = &ctx.images.busybox_docker;
    ctx.ensure_image(d).await?;
    remove(ctx, d).await?;
    check(status_of(ctx, d).await?.is_none(), || format!("ImageStatus {d} still finds it after RemoveImage"))?;
    let t = tags(&list(ctx).await?);
    check(!t.contains(d), || format!("ListImages still lists {d}"))
}

/// RemoveImage by id removes the image under all its tags.
pub async fn remove_image_by_id(ctx: &Ctx) -> Result<()> {
    let (b, m) = (&ctx.images.busybox, &ctx.images.busybox_multiarch);
    ctx.ensure_image(b).await?;
    ctx.ensure_image(m).await?;
    let i = status_of(ctx, b).await?.with_context(|| format!("ImageStatus {b}: no image"))?;
    remove(ctx, &i.id).await?;
    let imgs = list(ctx).await?;
    check(!imgs.iter().any(|x| x.id == i.id), || format!("ListImages still has image {}", i.id))?;
    let t = tags(&imgs);
    check(!t.contains(b) && !t.contains(m), || format!("tags {b} / {m} still listed: {t:?}"))?;
    check(status_of(ctx, m).await?.is_none(), || format!("ImageStatus {m} still finds it"))
}

/// RemoveImage twice: the second call is Ok too.
pub async fn remove_image_twice(ctx: &Ctx) -> Result<()> {
    let d = &ctx.images.busybox_docker;
    ctx.ensure_image(d).await?;
    remove(ctx, d).await?;
    remove(ctx, d).await.context("second RemoveImage of the same image must be Ok")
}

/// RemoveImage of an image a running container uses: the container keeps its files (its rootfs
/// still stacks the image's layers), and the image can be pulled and used again afterwards.
pub async fn remove_image_in_use(ctx: &Ctx) -> Result<()> {
    let img = &ctx.images.layers;
    ctx.ensure_image(img).await?;
    let i = status_of(ctx, img).await?.with_context(|| format!("ImageStatus {img}: no image"))?;
    let pod = ctx.run_pod("inuse").await?;
    let res = async {
        let c = ctx.start_container(&pod, "inuse", img, &["sleep", "300"]).await?;
        remove(ctx, &i.id).await.context("RemoveImage of an image in use")?;
        let r = ctx.exec(&c, &["cat", "/data/b"], 10).await?;
        check(r.exit_code == 0, || {
            format!(
                "after RemoveImage, `cat /data/b` in the running container: exit {} stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            )
        })?;
        let r = ctx.exec(&c, &["sh", "-c", "ls /bin | wc -l"], 10).await?;
        let n: u32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap_or(0);
        check(n > 10, || format!("after RemoveImage, the container's /bin holds {n} entries"))?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res?;
    ctx.pull(img).await.context("pulling the removed image again")?;
    let pod = ctx.run_pod("inuse2").await?;
    let res = async {
        let c = ctx.start_container(&pod, "inuse2", img, &["sleep", "300"]).await?;
        let r = ctx.exec(&c, &["cat", "/data/b"], 10).await?;
        check(r.exit_code == 0, || format!("re-pulled image: `cat /data/b` exit {}", r.exit_code))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
