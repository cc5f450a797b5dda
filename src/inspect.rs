//! The inspect endpoint: a small HTTP/1.1 JSON API on the unix socket `<run_root>/inspect.sock`
//! (mode 0600, root only) that shows the daemon's own view of an object for debugging, in the
//! role of CRI-O's `/containers/<id>` info endpoint (`crio status containers --id`).
//!
//! Routes (`ID` is a full ID or a unique prefix, as crictl passes them):
//! - `GET /containers/ID` -> 200 [`ContainerView`]
//! - `GET /pods/ID` -> 200 [`PodView`]
//! - `POST /images/import` with an image archive as the body (docker-archive or OCI image
//!   layout tarball, plain or gzip'd; `Content-Length` or chunked) -> 200
//!   `{"images": [{"id", "repo_tags"}]}` ([`crate::image::ImageStore::import`]); a bad archive
//!   -> 400, a store failure -> 500. This is how `berth image import` reaches a running daemon,
//!   which holds the store's lock.
//! - `POST /images/export` with the JSON body [`ExportRequest`] -> 200
//!   `{"images": [ExportedImage]}` once the daemon has written the archive to `output`
//!   ([`crate::image::ImageStore::export_to_file`]: whole or not at all); an image it lacks ->
//!   400, a write or store failure -> 500. How `berth image export` reaches a running daemon.
//! - anything else -> 404 / 405; an unknown or ambiguous ID -> 404 / 400. Errors are
//!   `{"error": "<message>"}`.
//!
//! [`query`] is the client `berth status` uses, [`post_stream`] the one `berth image import`
//! uses (blocking, std only).

use crate::container::{ContainerPaths, ContainerRecord};
use crate::daemon::Daemon;
use crate::error::Error as DaemonError;
use crate::sandbox::{SandboxPaths, SandboxRecord};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The import route.
pub const IMPORT_PATH: &str = "/images/import";
/// Request header of the import route naming the archive in errors and logs (its file name);
/// `request body` without it.
pub const ARCHIVE_NAME_HEADER: &str = "x-berth-archive-name";

/// The socket's file name under `run_root`.
pub const SOCKET_NAME: &str = "inspect.sock";

/// Errors of the inspect server and client.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The socket could not be created, bound or given mode 0600; `what` says which step.
    #[error("inspect socket {path:?}: {what}: {source}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The client could not connect, send or read (is the daemon running with this run_root?).
    #[error("inspect socket {path:?}: {what}: {source}")]
    Client {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The answer was not an HTTP/1.1 response with a status line and a body.
    #[error("inspect socket {path:?}: malformed HTTP response (expected `HTTP/1.1 <code> ...`, headers, body): {head:?}")]
    Protocol { path: PathBuf, head: String },
}

/// `<run_root>/inspect.sock`.
pub fn socket_path(run_root: &Path) -> PathBuf {
    run_root.join(SOCKET_NAME)
}

/// Host PIDs of a container: its init process and its `berth-monitor`.
#[derive(Debug, Clone, Serialize)]
pub struct Pids {
    /// The container's (or the infra's) init process; 0 before create finished.
    pub init: i32,
    /// Its `berth-monitor`; 0 before create finished.
    pub monitor: i32,
    /// Whether `monitor` still exists (`kill(pid, 0)`); a monitor ends when its container exits.
    pub monitor_alive: bool,
}

/// `GET /containers/ID`: a container as berth holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    /// The store record, exit file folded in: CRI config, state, exit code, reason, times (ns).
    pub record: ContainerRecord,
    pub pids: Pids,
    /// OCI bundle directory (config.json, monitor.json, runtime.log, exit file).
    pub bundle: PathBuf,
    /// The monitor's exit file (present once the container exited).
    pub exit_file: PathBuf,
    /// Absolute CRI log path; `None` when the container logs nowhere.
    pub log_path: Option<PathBuf>,
    /// The OCI `linux.cgroupsPath` (cgroupfs path under each controller's mount).
    pub cgroups_path: String,
    /// The pod's pinned network namespace; `None` for a host-network pod (or a pod gone).
    pub netns_path: Option<PathBuf>,
}

/// `GET /pods/ID`: a pod sandbox as berth holds it.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    /// The store record: CRI config, state, IPs, cgroup parent, times (ns).
    pub record: SandboxRecord,
    /// The infra (`berth-pause`) process and its monitor (0 for a pod without an infra
    /// process, whose namespaces are `record.pinned`).
    pub pids: Pids,
    /// The infra container's OCI bundle directory (for a pod without one: the pod's `shm/`).
    pub bundle: PathBuf,
    /// The infra container's OCI `linux.cgroupsPath`; `None` for a pod without one.
    pub cgroups_path: Option<String>,
    /// Pinned network namespace; `None` for a host-network pod.
    pub netns_path: Option<PathBuf>,
    /// IDs of the pod's containers.
    pub containers: Vec<String>,
}

fn pids(init: i32, monitor: i32) -> Pids {
    let monitor_alive = monitor > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), None).is_ok();
    Pids { init, monitor, monitor_alive }
}

/// The view of container `id` (full ID or unique prefix).
///
/// Errors: as [`crate::container::get`] (NotFound, InvalidArgument for an ambiguous prefix).
pub fn container_view(d: &Daemon, id: &str) -> Result<ContainerView, DaemonError> {
    let record = crate::container::get(d, id)?;
    let paths = ContainerPaths::new(d, &record.id);
    let sandbox = crate::sandbox::get(d, &record.sandbox_id).ok();
    let parent = sandbox.as_ref().map_or(d.config.cgroup_parent.as_str(), |s| s.cgroup_parent.as_str());
    Ok(ContainerView {
        pids: pids(record.pid, record.monitor_pid),
        bundle: paths.bundle,
        exit_file: paths.exit_file,
        log_path: (!record.log_path.is_empty()).then(|| PathBuf::from(&record.log_path)),
        cgroups_path: crate::spec::cgroups_path(parent, &record.id),
        netns_path: sandbox.and_then(|s| s.netns_path),
        record,
    })
}

/// The view of pod sandbox `id` (full ID or unique prefix).
///
/// Errors: as [`crate::sandbox::get`] (NotFound, InvalidArgument for an ambiguous prefix).
pub fn pod_view(d: &Daemon, id: &str) -> Result<PodView, DaemonError> {
    let record = crate::sandbox::get(d, id)?;
    let paths = SandboxPaths::new(d, &record.id);
    let containers = crate::container::list_in_sandbox(d, &record.id).into_iter().map(|c| c.id).collect();
    Ok(PodView {
        pids: pids(record.infra_pid, record.monitor_pid),
        bundle: paths.bundle,
        cgroups_path: record.has_infra().then(|| crate::spec::cgroups_path(&record.cgroup_parent, &record.id)),
        netns_path: record.netns_path.clone(),
        containers,
        record,
    })
}

/// Answers one request: `(status, JSON body)`. `method` and `path` as in the request line.
pub fn route(d: &Daemon, method: &Method, path: &str) -> (StatusCode, serde_json::Value) {
    let (kind, id) = match path.trim_start_matches('/').split_once('/') {
        Some((k @ ("containers" | "pods"), id)) if !id.is_empty() && !id.contains('/') => (k, id),
        _ => return error(StatusCode::NOT_FOUND, format!("no route {path:?}: use /containers/<id> or /pods/<id>")),
    };
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {path}: only GET is served"));
    }
    let value =
        if kind == "containers" { container_view(d, id).map(serde_json::to_value) } else { pod_view(d, id).map(serde_json::to_value) };
    match value {
        Ok(Ok(v)) => (StatusCode::OK, v),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding {kind}/{id}: {e}")),
        Err(e @ DaemonError::NotFound { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ DaemonError::InvalidArgument { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// One imported image in the answer of `POST /images/import`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ImportedImage {
    /// `sha256:<hex>` image ID.
    pub id: String,
    /// Its normalized names after the import.
    pub repo_tags: Vec<String>,
}

/// `POST /images/import`: streams the body into [`crate::image::ImageStore::import`].
async fn import_route(d: &Daemon, req: Request<hyper::body::Incoming>) -> (StatusCode, serde_json::Value) {
    use crate::image::ImageError;
    use http_body_util::BodyExt;
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{} {IMPORT_PATH}: only POST is served", req.method()));
    }
    let source = req
        .headers()
        .get(ARCHIVE_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("request body")
        .to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let mut body = req.into_body();
    let pump = tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let item = match frame {
                Ok(f) => match f.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue,
                },
                Err(e) => Err(std::io::Error::other(format!("reading the request body: {e}"))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let result = d.images.import(crate::util::ChannelReader::new(rx), &source).await;
    pump.abort();
    match result {
        Ok(images) => {
            let images: Vec<ImportedImage> = images.into_iter().map(|i| ImportedImage { id: i.id, repo_tags: i.repo_tags }).collect();
            (StatusCode::OK, serde_json::json!({ "images": images }))
        }
        Err(e @ (ImageError::Io { .. } | ImageError::State(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The export route.
pub const EXPORT_PATH: &str = "/images/export";

/// The body of `POST /images/export`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ExportRequest {
    /// Image references (tags, IDs, unique ID prefixes).
    pub images: Vec<String>,
    /// Absolute path of the archive to write on this host.
    pub output: PathBuf,
}

/// `POST /images/export`: the daemon writes the archive itself (its body is small JSON).
async fn export_route(d: &Daemon, req: Request<hyper::body::Incoming>) -> (StatusCode, serde_json::Value) {
    use crate::image::ImageError;
    use http_body_util::BodyExt;
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{} {EXPORT_PATH}: only POST is served", req.method()));
    }
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{EXPORT_PATH}: reading the body (at most 1 MiB of JSON): {e}")),
    };
    let r: ExportRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{EXPORT_PATH}: expected JSON {{\"images\": [...], \"output\": \"/path\"}}: {e}"),
            )
        }
    };
    if !r.output.is_absolute() || r.images.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{EXPORT_PATH}: expected at least one image and an absolute output path, got {:?}", r.output),
        );
    }
    match d.images.export_to_file(&r.images, &r.output).await {
        Ok(images) => (StatusCode::OK, serde_json::json!({ "images": images })),
        Err(e @ ImageError::Archive { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(code: StatusCode, message: String) -> (StatusCode, serde_json::Value) {
    (code, serde_json::json!({ "error": message }))
}

/// Binds `socket` (a stale file there is removed first; mode 0600) and serves [`route`] on it
/// until the returned task is aborted or the runtime ends.
///
/// Errors: [`InspectError::Socket`] when the directory, bind or chmod fails.
pub async fn serve(d: Arc<Daemon>, socket: &Path) -> Result<tokio::task::JoinHandle<()>, InspectError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |what, source| InspectError::Socket { what, path: socket.to_path_buf(), source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err("remove stale socket", e)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| err("bind", e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| err("chmod 0600", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "inspect socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let d = d.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let d = d.clone();
                    async move {
                        let (code, body) = if req.uri().path() == IMPORT_PATH {
                            import_route(&d, req).await
                        } else if req.uri().path() == EXPORT_PATH {
                            export_route(&d, req).await
                        } else {
                            route(&d, req.method(), req.uri().path())
                        };
                        let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
                        text.push(b'\n');
                        let mut resp = Response::new(Full::new(Bytes::from(text)));
                        *resp.status_mut() = code;
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                    tracing::debug!(error = %e, "inspect socket: connection ended with an error");
                }
            });
        }
    }))
}

/// Client: `GET path` on the inspect socket; returns the HTTP status code and the body.
/// Blocking (std), one request per connection (`Connection: close`), 10 s timeouts.
///
/// Errors: [`InspectError::Client`] for connect/send/read failures, [`InspectError::Protocol`]
/// for an answer that is not HTTP/1.x with a status code.
pub fn query(socket: &Path, path: &str) -> Result<(u16, String), InspectError> {
    use std::io::{Read, Write};
    let err = |what, source| InspectError::Client { what, path: socket.to_path_buf(), source };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| err("connect", e))?;
    let timeout = Some(std::time::Duration::from_secs(10));
    s.set_read_timeout(timeout).map_err(|e| err("set timeout", e))?;
    s.set_write_timeout(timeout).map_err(|e| err("set timeout", e))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").map_err(|e| err("send", e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| err("read", e))?;
    parse_response(&raw).ok_or_else(|| InspectError::Protocol {
        path: socket.to_path_buf(),
        head: String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned(),
    })
}

/// Client: `POST path` on the inspect socket with `body` streamed as the request body
/// (`Content-Length: len` when known, else chunked) and the extra `headers` (values with
/// characters other than printable ASCII have them replaced by `?`); returns the HTTP status code and the
/// response body. Blocking (std). The answer may take as long as the daemon needs (an import
/// of a large archive): reads wait up to an hour. When the daemon answers before taking the
/// whole body (a bad archive), its answer is returned.
///
/// Errors: [`InspectError::Client`] (`what` is `"connect"` when no daemon listens: the socket
/// is missing or refuses), [`InspectError::Protocol`] for an answer that is not HTTP/1.x.
pub fn post_stream(
    socket: &Path,
    path: &str,
    headers: &[(&str, &str)],
    body: &mut dyn std::io::Read,
    len: Option<u64>,
) -> Result<(u16, String), InspectError> {
    use std::io::{Read, Write};
    let err = |what, source| InspectError::Client { what, path: socket.to_path_buf(), source };
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3600))).map_err(|e| err("set timeout", e))?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(600))).map_err(|e| err("set timeout", e))?;
    let mut framing = match len {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    for (k, v) in headers {
        let v: String = v.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
        framing.push_str(&format!("\r\n{k}: {v}"));
    }
    let sent = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &s);
        write!(w, "POST {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Type: application/x-tar\r\n{framing}\r\n\r\n")?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("reading the archive: {e}"))),
            };
            if len.is_none() {
                write!(w, "{n:x}\r\n")?;
            }
            w.write_all(&buf[..n])?;
            if len.is_none() {
                w.write_all(b"\r\n")?;
            }
        }
        if len.is_none() {
            w.write_all(b"0\r\n\r\n")?;
        }
        w.flush()
    })();
    let mut raw = Vec::new();
    let read = (&s).read_to_end(&mut raw);
    match (parse_response(&raw), sent, read) {
        (Some(answer), _, _) => Ok(answer),
        (None, Err(e), _) => Err(err("send", e)),
        (None, Ok(()), Err(e)) => Err(err("read", e)),
        (None, Ok(()), Ok(_)) => Err(InspectError::Protocol {
            path: socket.to_path_buf(),
            head: String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned(),
        }),
    }
}

/// Splits a whole HTTP/1.x response (not chunked) into its status code and body. Pure.
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut status = head.lines().next()?.split_whitespace();
    if !status.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = status.next()?.parse().ok()?;
    Some((code, String::from_utf8_lossy(&raw[end + 4..]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r), Some((404, "{}".into())));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n"), Some((200, String::new())));
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn socket_is_under_run_root() {
        assert_eq!(socket_path(Path::new("/run/berth")), PathBuf::from("/run/berth/inspect.sock"));
    }
}
