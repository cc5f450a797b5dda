//! The opt-in `/metrics` endpoint: HTTP/1.1 (hyper) on `[metrics] address:port`.
//!
//! `GET /metrics` answers 200 with the text document ([`crate::metrics::encode::render`],
//! Content-Type `text/plain; version=0.0.4`); `berth_containers{state}` is counted from the
//! metadata store at scrape time (the listing folds exits in, as ListContainers does). Any
//! other path is 404, any other method 405. No TLS, no auth: bind it to loopback or a node-local
//! address.

use crate::config::MetricsConfig;
use crate::container::ContainerState;
use crate::daemon::Daemon;
use crate::metrics::encode::{render, CONTENT_TYPE};
use crate::metrics::MetricsError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// The CRI state names used as `berth_containers{state}` label values, in output order.
pub const STATE_LABELS: [&str; 4] = ["created", "running", "exited", "unknown"];

/// Containers per state, as (label, count), every state present (zeros included).
pub fn count_states(states: impl IntoIterator<Item = ContainerState>) -> Vec<(&'static str, u64)> {
    let mut n = [0u64; 4];
    for s in states {
        n[match s {
            ContainerState::Created => 0,
            ContainerState::Running => 1,
            ContainerState::Exited => 2,
            ContainerState::Unknown => 3,
        }] += 1;
    }
    STATE_LABELS.iter().copied().zip(n).collect()
}

/// Starts the endpoint when `cfg.enabled`: binds `address:port` now (so a busy port fails the
/// daemon's start) and serves on a tokio task for the life of the runtime. Returns the bound
/// address, or `None` when disabled.
///
/// Errors: [`MetricsError::BadAddress`], [`MetricsError::Bind`].
pub async fn start(d: Arc<Daemon>, cfg: &MetricsConfig) -> Result<Option<SocketAddr>, MetricsError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let ip: std::net::IpAddr = cfg.address.parse().map_err(|_| MetricsError::BadAddress { address: cfg.address.clone() })?;
    let addr = SocketAddr::new(ip, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let d = d.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(d.clone(), req));
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                }
            });
        }
    });
    Ok(Some(local))
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

async fn handle<B>(d: Arc<Daemon>, req: Request<B>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, PLAIN, "not found: metrics are at /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET /metrics\n");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    // The in-memory table: no store read, no write.
    let containers = count_states(crate::container::list(&d).into_iter().map(|r| r.state));
    Ok(reply(StatusCode::OK, CONTENT_TYPE, render(crate::metrics::global(), &containers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_counted_with_zeros() {
        let v = count_states([ContainerState::Running, ContainerState::Running, ContainerState::Exited]);
        assert_eq!(v, vec![("created", 0), ("running", 2), ("exited", 1), ("unknown", 0)]);
    }
}
