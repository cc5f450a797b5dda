//! The local test registry: Debian's `docker-registry serve` on 127.0.0.1:<free port> with
//! filesystem storage in the suite's temp dir, and a minimal pusher (Docker Registry HTTP API V2:
//! `POST /v2/<name>/blobs/uploads/`, `PUT <location>&digest=`, `PUT /v2/<name>/manifests/<ref>`).

use crate::http;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `docker-registry` child process, stopped by PID on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry host used in image references.
    pub addr: String,
    child: Option<Child>,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Picks a free loopback TCP port (bind to port 0, read it, close).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Writes a `docker-registry serve` config to `path`: filesystem storage at `storage`
/// (deletes allowed), listening on `addr` (`127.0.0.1:PORT`), warnings only in its log.
pub fn write_config(path: &Path, storage: &Path, addr: &str) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        ),
    )
    .with_context(|| format!("write {}", path.display()))
}

/// Spawns `[PREFIX...] docker-registry serve CFG` (a prefix such as `nsenter --net=...` runs it
/// elsewhere), its output into the file `log`, stdin closed.
pub fn spawn_serve(prefix: &[String], cfg: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let (program, args): (&str, &[String]) = match prefix.split_first() {
        Some((p, rest)) => (p.as_str(), rest),
        None => ("docker-registry", &[]),
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !prefix.is_empty() {
        cmd.arg("docker-registry");
    }
    cmd.arg("serve")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawn {program} docker-registry serve (Debian package docker-registry)"))
}

impl Registry {
    /// Starts `docker-registry serve` with its storage under `dir`, waits (30 s max) until
    /// `GET /v2/` answers 200. Its output goes to `dir/registry.log`.
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.join("config.yml");
        write_config(&cfg, &dir.join("storage"), &addr)?;
        let child = spawn_serve(&[], &cfg, &dir.join("registry.log"))?;
        let mut reg = Registry { addr, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http::request(&reg.addr, "GET", "/v2/", None, b"") {
                if r.status == 200 {
                    return Ok(reg);
                }
            }
            if let Some(c) = reg.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("docker-registry exited with {st}; see {}", dir.join("registry.log").display());
                }
            }
            if Instant::now() > deadline {
                bail!("docker-registry at {} did not answer GET /v2/ within 30 s", reg.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Uploads one blob to repository `name` (monolithic upload); returns its digest.
    /// Skips the upload when the blob already exists.
    pub fn push_blob(&self, name: &str, data: &[u8]) -> Result<String> {
        let digest = sha256_digest(data);
        let head = http::request(&self.addr, "HEAD", &format!("/v2/{name}/blobs/{digest}"), None, b"")?;
        if head.status == 200 {
            return Ok(digest);
        }
        let r = http::request(&self.addr, "POST", &format!("/v2/{name}/blobs/uploads/"), None, b"")?;
        if r.status != 202 {
            bail!("POST /v2/{name}/blobs/uploads/: expected 202, got {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        let loc = r.header("location").context("upload reply has no Location")?.to_string();
        let path = match loc.find("/v2/") {
            Some(i) => loc[i..].to_string(),
            None => bail!("upload Location {loc:?} has no /v2/ path"),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = format!("{path}{sep}digest={digest}");
        let r = http::request(&self.addr, "PUT", &put, Some("application/octet-stream"), data)?;
        if r.status != 201 {
            bail!("PUT blob {digest} to {name}: expected 201, got {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(digest)
    }

    /// Puts a manifest (or index) under `name:reference` with its media type; returns its digest.
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, body: &[u8]) -> Result<String> {
        let r = http::request(&self.addr, "PUT", &format!("/v2/{name}/manifests/{reference}"), Some(media_type), body)?;
        if r.status != 201 {
            bail!("PUT manifest {name}:{reference} ({media_type}): expected 201, got {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(sha256_digest(body))
    }

    /// Stops the registry (SIGTERM by PID, then SIGKILL after 5 s) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::proc::terminate_child(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
