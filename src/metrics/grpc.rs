//! A tower layer around the tonic server that counts every CRI call by method and gRPC status
//! code and records its latency in [`super::global`].
//!
//! The code is read from the `grpc-status` response header: tonic sends an error as a
//! "trailers-only" response (status in the headers), and a success as headers without a
//! status and `grpc-status: 0` in the trailers, so a header without `grpc-status` counts as OK.
//! The latency is the time to the response headers, which for a unary call is the whole
//! handler; for a server stream (GetContainerEvents) it is the time to open the stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// The RPC name of a gRPC path: `/runtime.v1.RuntimeService/Version` -> `Version`; a path that
/// is not under a `runtime.v1.` service gives `other`.
pub fn method_of(path: &str) -> &str {
    match path.strip_prefix("/runtime.v1.").and_then(|rest| rest.split_once('/')) {
        Some((_, m)) if !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric()) => m,
        _ => "other",
    }
}

/// The gRPC status code of a response's headers (0 when absent: see the module docs; an
/// unparsable value is 2 Unknown).
pub fn code_of(headers: &http::HeaderMap) -> u32 {
    match headers.get("grpc-status") {
        None => 0,
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(2),
    }
}

/// The layer: `Server::builder().layer(GrpcMetricsLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the inner router.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // A transport error (no response at all) counts as Unavailable.
            let code = res.as_ref().map_or(14, |r| code_of(r.headers()));
            super::global().observe_rpc(&method, code, started.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/RunPodSandbox"), "RunPodSandbox");
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(method_of("/runtime.v1.RuntimeService/a\"b"), "other");
        assert_eq!(method_of("/runtime.v1.RuntimeService/"), "other");
    }

    #[test]
    fn codes_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), 0);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&h), 5);
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(code_of(&h), 2);
    }
}
