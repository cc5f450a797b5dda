//! The images critest v1.36 pulls, built from this machine's Debian files and pushed to the
//! local registry under the paths their upstream registries use, so that berth's mirrors for
//! `registry.k8s.io`, `gcr.io` and `k8s.gcr.io` serve them:
//!
//! | upstream reference | what it is here |
//! |---|---|
//! | `registry.k8s.io/e2e-test-images/busybox:1.29-2` | the base: Debian's busybox (+ `ldd` libraries, a hard link per applet), Debian's `ipcs` and `pgrep` (applets upstream's busybox has and Debian's lacks), busybox's /etc/passwd and /etc/group, `Cmd ["sh"]` |
//! | `.../nginx:1.14-2` | base + a static web server at /usr/sbin/nginx on port 80 that writes /var/run/nginx.pid and shows `nginx: master process` in its cmdline |
//! | `.../httpd:2.4.39-4` | base + the web server as /usr/local/apache2/bin/httpd on port 80, logging a line naming "httpd" |
//! | `.../nonewprivs:1.3` | base + a setuid-root /usr/local/bin/nnp printing `Effective uid: N` (entrypoint) |
//! | `gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64` | the nginx stand-in on port 12003 (images/hostnet-nginx) |
//! | `.../test-image-user-uid`, `-username`, `-uid-group`, `-username-group` | base with `User` 1002, www-data, 1003:1004, www-data:1004 (images/build) |
//! | `.../test-image-predefined-group` | base + default-user (1000) in group-defined-in-image (50000), `User 1000` |
//! | `.../test-image-latest`, `test-image-1/2/3:latest`, `test-image-tag:test`, `test-image-tag:all` | base + an empty file named after the image or tag (each a different image, as images/build makes them) |
//! | `.../test-image-tags:1/2/3` | one image (file `/same-image`) under three tags |
//! | `registry.k8s.io/pause:3.9` = `k8s.gcr.io/pause:3.9` | a static pause program, entrypoint `/pause` (one repository `pause` in the local registry) |
//!
//! Multi-arch ones are Docker manifest lists (as upstream) with the real linux/amd64 image and a
//! bogus linux/arm64 one; `hostnet-nginx-amd64` is a single Docker schema2 manifest.

use super::programs;
use anyhow::Result;
use berth_conformance::imagekit::{busybox_tree, compile_static, compress, image_config, Compression, Layer, TarBuilder, PAUSE_SRC};
use berth_conformance::imagekit::{DOCKER_LIST, DOCKER_MANIFEST, PATH_ENV};
use berth_conformance::registry::Registry;
use std::path::Path;

/// Repository prefix (in the local registry) of `registry.k8s.io/e2e-test-images/`.
const E2E: &str = "e2e-test-images";
/// Repository prefix of `gcr.io/k8s-staging-cri-tools/`.
const CRI_TOOLS: &str = "k8s-staging-cri-tools";

/// busybox's /etc/passwd and /etc/group (as in the upstream busybox image).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
";
const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
";

fn docker_gzip(tar: Vec<u8>) -> Result<Layer> {
    compress(tar, Compression::Gzip, true)
}

/// The base layer: busybox + applet links + Debian's ipcs and pgrep + passwd/group.
fn base_tar() -> Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    // Upstream busybox has these applets; Debian's does not (critest runs `ipcs -m` and
    // `sh -c "pgrep sleep || true"`, whose stderr must be empty).
    busybox_tree(&mut t, &[("/usr/bin/ipcs", "util-linux"), ("/usr/bin/pgrep", "procps")])?;
    t.file("etc/passwd", 0o644, PASSWD.as_bytes())?;
    t.file("etc/group", 0o644, GROUP.as_bytes())?;
    t.dir("tmp", 0o1777, 0)?;
    for d in ["root", "home", "proc", "sys", "dev", "etc", "var", "var/run", "run", "var/www"] {
        t.dir(d, 0o755, 0)?;
    }
    t.finish()
}

fn config_json(arch: &str, layers: &[&Layer], cfg: serde_json::Value) -> Vec<u8> {
    image_config(arch, layers, cfg)
}

/// A Docker schema2 image under `name:tag`, or only by digest when `tag` is None.
fn push_image(reg: &Registry, name: &str, tag: Option<&str>, config: &[u8], layers: &[&Layer]) -> Result<(String, usize)> {
    berth_conformance::imagekit::push_image(reg, name, tag, config, layers, true)
}

/// What every image shares: the base layer and a bogus arm64 image for manifest lists.
pub struct Builder<'a> {
    reg: &'a Registry,
    base: Layer,
    bogus: Layer,
    /// Every reference pushed, as upstream names it.
    pub pushed: Vec<String>,
}

/// An image: extra layers on the base and its config.
struct Spec {
    layers: Vec<Layer>,
    cfg: serde_json::Value,
}

fn default_cfg() -> serde_json::Value {
    serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"] })
}

impl<'a> Builder<'a> {
    fn new(reg: &'a Registry) -> Result<Self> {
        let base = docker_gzip(base_tar()?)?;
        let mut b = TarBuilder::new();
        b.file("bogus-arm64", 0o644, b"not a real arm64 image\n")?;
        let bogus = docker_gzip(b.finish()?)?;
        Ok(Builder { reg, base, bogus, pushed: Vec::new() })
    }

    /// Pushes `spec` as a manifest list (amd64 + bogus arm64) under each of `tags`.
    fn push_list(&mut self, upstream: &str, name: &str, tags: &[&str], spec: &Spec) -> Result<()> {
        let mut layers: Vec<&Layer> = vec![&self.base];
        layers.extend(spec.layers.iter());
        self.push_list_of(name, tags, &layers, spec.cfg.clone())?;
        for tag in tags {
            self.pushed.push(format!("{upstream}:{tag}"));
        }
        Ok(())
    }

    /// Pushes `layers` with config `cfg` as the linux/amd64 entry of a manifest list (with the
    /// bogus linux/arm64 image) under `name` and each of `tags`.
    fn push_list_of(&self, name: &str, tags: &[&str], layers: &[&Layer], cfg: serde_json::Value) -> Result<()> {
        let cfg = config_json("amd64", layers, cfg);
        let (amd, amd_size) = push_image(self.reg, name, None, &cfg, layers)?;
        let acfg = config_json("arm64", &[&self.bogus], default_cfg());
        let (arm, arm_size) = push_image(self.reg, name, None, &acfg, &[&self.bogus])?;
        let list = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                { "mediaType": DOCKER_MANIFEST, "digest": amd, "size": amd_size, "platform": { "architecture": "amd64", "os": "linux" } },
                { "mediaType": DOCKER_MANIFEST, "digest": arm, "size": arm_size, "platform": { "architecture": "arm64", "os": "linux" } },
            ],
        }))?;
        for tag in tags {
            self.reg.push_manifest(name, tag, DOCKER_LIST, &list)?;
        }
        Ok(())
    }

    /// Pushes `spec` as a single-platform manifest under `name:tag`.
    fn push_single(&mut self, upstream: &str, name: &str, tag: &str, spec: &Spec) -> Result<()> {
        let mut layers: Vec<&Layer> = vec![&self.base];
        layers.extend(spec.layers.iter());
        let cfg = config_json("amd64", &layers, spec.cfg.clone());
        push_image(self.reg, name, Some(tag), &cfg, &layers)?;
        self.pushed.push(format!("{upstream}:{tag}"));
        Ok(())
    }
}

fn one_layer(f: impl FnOnce(&mut TarBuilder) -> Result<()>) -> Result<Layer> {
    let mut t = TarBuilder::new();
    f(&mut t)?;
    docker_gzip(t.finish()?)
}

/// The web server layer: the program at `bin_path`, its config, an index page.
fn webserver_layer(bin: &[u8], bin_path: &str, conf: &str, root: &str, page: &str) -> Result<Layer> {
    one_layer(|t| {
        t.file(bin_path, 0o755, bin)?;
        t.file("etc/test-webserver.conf", 0o644, conf.as_bytes())?;
        t.file(&format!("{root}/index.html"), 0o644, page.as_bytes())?;
        t.dir("var/run", 0o755, 0)?;
        Ok(())
    })
}

/// Builds and pushes every image; returns the upstream references pushed.
pub fn build_and_push(reg: &Registry, work: &Path) -> Result<Vec<String>> {
    let web = std::fs::read(compile_static(work, "webserver", programs::WEBSERVER_SRC)?)?;
    let nnp = std::fs::read(compile_static(work, "nnp", programs::NNP_SRC)?)?;
    let pause = std::fs::read(compile_static(work, "pause", PAUSE_SRC)?)?;
    let mut b = Builder::new(reg)?;

    // registry.k8s.io/e2e-test-images/busybox:1.29-2
    b.push_list(
        "registry.k8s.io/e2e-test-images/busybox",
        &format!("{E2E}/busybox"),
        &["1.29-2"],
        &Spec { layers: vec![], cfg: default_cfg() },
    )?;

    // nginx:1.14-2 and hostnet-nginx-amd64 (port 12003).
    let nginx_page = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n";
    let nginx_conf = |port: u16| {
        format!("port={port}\npidfile=/var/run/nginx.pid\narg0=nginx: master process nginx -g daemon off;\nroot=/usr/share/nginx/html\n")
    };
    let nginx_cfg = serde_json::json!({
        "Env": [PATH_ENV, "NGINX_VERSION=1.14.2"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "ExposedPorts": { "80/tcp": {} },
        "StopSignal": "SIGTERM",
    });
    let l = webserver_layer(&web, "usr/sbin/nginx", &nginx_conf(80), "usr/share/nginx/html", nginx_page)?;
    b.push_list(
        "registry.k8s.io/e2e-test-images/nginx",
        &format!("{E2E}/nginx"),
        &["1.14-2"],
        &Spec { layers: vec![l], cfg: nginx_cfg.clone() },
    )?;
    let l = webserver_layer(&web, "usr/sbin/nginx", &nginx_conf(12003), "usr/share/nginx/html", nginx_page)?;
    let mut hcfg = nginx_cfg.clone();
    hcfg["ExposedPorts"] = serde_json::json!({ "12003/tcp": {} });
    b.push_single(
        "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64",
        &format!("{CRI_TOOLS}/hostnet-nginx-amd64"),
        "latest",
        &Spec { layers: vec![l], cfg: hcfg },
    )?;

    // httpd:2.4.39-4
    let l = webserver_layer(
        &web,
        "usr/local/apache2/bin/httpd",
        "port=80\nroot=/usr/local/apache2/htdocs\nbanner=httpd: test web server (critest-prep stand-in for Apache httpd 2.4.39) listening on port 80\n",
        "usr/local/apache2/htdocs",
        "<html><body><h1>It works!</h1></body></html>\n",
    )?;
    let httpd_cfg = serde_json::json!({
        "Env": ["PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HTTPD_PREFIX=/usr/local/apache2"],
        "Cmd": ["httpd"],
        "WorkingDir": "/usr/local/apache2",
        "ExposedPorts": { "80/tcp": {} },
    });
    b.push_list(
        "registry.k8s.io/e2e-test-images/httpd",
        &format!("{E2E}/httpd"),
        &["2.4.39-4"],
        &Spec { layers: vec![l], cfg: httpd_cfg },
    )?;

    // nonewprivs:1.3: setuid-root nnp.
    let l = one_layer(|t| t.file("usr/local/bin/nnp", 0o4755, &nnp))?;
    let nnp_cfg = serde_json::json!({ "Env": [PATH_ENV], "Entrypoint": ["/usr/local/bin/nnp"] });
    b.push_list(
        "registry.k8s.io/e2e-test-images/nonewprivs",
        &format!("{E2E}/nonewprivs"),
        &["1.3"],
        &Spec { layers: vec![l], cfg: nnp_cfg },
    )?;

    // test-image-user-*: images/build's IMAGE_USERS.
    for (image, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        let cfg = serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"], "User": user });
        b.push_list(
            &format!("gcr.io/k8s-staging-cri-tools/{image}"),
            &format!("{CRI_TOOLS}/{image}"),
            &["latest"],
            &Spec { layers: vec![], cfg },
        )?;
    }

    // test-image-predefined-group: default-user (1000) in group-defined-in-image (50000).
    let l = one_layer(|t| {
        t.file("etc/passwd", 0o644, format!("{PASSWD}default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n").as_bytes())?;
        t.file("etc/group", 0o644, format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n").as_bytes())?;
        t.dir("home", 0o755, 0)?;
        t.dir("home/default-user", 0o755, 1000)?;
        Ok(())
    })?;
    let cfg = serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"], "User": "1000" });
    b.push_list(
        "gcr.io/k8s-staging-cri-tools/test-image-predefined-group",
        &format!("{CRI_TOOLS}/test-image-predefined-group"),
        &["latest"],
        &Spec { layers: vec![l], cfg },
    )?;

    // test-image-*: an empty file /<TEST> on the base (images/image-test).
    let test_file = |name: &str| one_layer(|t| t.file(name, 0o644, b""));
    for image in ["test-image-1", "test-image-2", "test-image-3", "test-image-latest"] {
        let spec = Spec { layers: vec![test_file(image)?], cfg: default_cfg() };
        b.push_list(&format!("gcr.io/k8s-staging-cri-tools/{image}"), &format!("{CRI_TOOLS}/{image}"), &["latest"], &spec)?;
    }
    let spec = Spec { layers: vec![test_file("same-image")?], cfg: default_cfg() };
    b.push_list("gcr.io/k8s-staging-cri-tools/test-image-tags", &format!("{CRI_TOOLS}/test-image-tags"), &["1", "2", "3"], &spec)?;
    for tag in ["test", "all"] {
        let spec = Spec { layers: vec![test_file(tag)?], cfg: default_cfg() };
        b.push_list("gcr.io/k8s-staging-cri-tools/test-image-tag", &format!("{CRI_TOOLS}/test-image-tag"), &[tag], &spec)?;
    }

    // pause:3.9, served for registry.k8s.io/pause and k8s.gcr.io/pause (same repository here).
    let l = one_layer(|t| t.file("pause", 0o755, &pause))?;
    let cfg = serde_json::json!({ "Env": [PATH_ENV], "Entrypoint": ["/pause"], "WorkingDir": "/" });
    // pause is FROM scratch upstream: its own list, without the busybox base.
    b.push_list_of("pause", &["3.9"], &[&l], cfg)?;
    b.pushed.push("registry.k8s.io/pause:3.9".into());
    b.pushed.push("k8s.gcr.io/pause:3.9".into());
    Ok(b.pushed)
}
