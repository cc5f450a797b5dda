//! A tower layer that answers a call whose deadline passed with `DEADLINE_EXCEEDED`, as the
//! gRPC protocol asks ("PROTOCOL-HTTP2.md": `grpc-timeout`; status codes: DEADLINE_EXCEEDED,
//! "deadline expired before the operation could complete").
//!
//! tonic's server enforces the caller's `grpc-timeout` itself but answers `CANCELLED` ("Timeout
//! expired"), and only when its own timer wins the race against the client's: critest's
//! "public image should timeout if requested" (a PullImage with a 1 ms deadline, which must fail
//! with DeadlineExceeded) then fails now and then. This layer sits inside tonic's timeout, with a
//! deadline [`MARGIN`] earlier than tonic's, so the answer a client sees is always
//! DEADLINE_EXCEEDED, and the metrics layer around it counts it. As with tonic's own timeout, the
//! handler is dropped (the call abandoned) when the deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http;

/// How much earlier than tonic's own timer this layer's deadline is, so it always answers
/// first (tokio's timers tick in milliseconds).
pub const MARGIN: Duration = Duration::from_millis(1);

/// A `grpc-timeout` header value as a duration: 1 to 8 ASCII digits and a unit, `H` hours,
/// `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds (gRPC
/// "PROTOCOL-HTTP2.md", Timeout). `None` for anything else (the call then has no deadline here,
/// as tonic treats it).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The layer: `Server::builder().layer(DeadlineLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(timeout) = timeout else { return fut.await };
            match tokio::time::timeout(timeout.saturating_sub(MARGIN), fut).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::info!(method = %path, ?timeout, "the caller's deadline passed; call abandoned");
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "{path}: the caller's deadline (grpc-timeout {timeout:?}) passed before berth finished; the call was abandoned"
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    #[test]
    fn timeouts_parse_as_the_protocol_spells_them() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "1", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    async fn slow(_req: http::Request<()>) -> Result<http::Response<String>, std::convert::Infallible> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(http::Response::new("late".into()))
    }

    #[tokio::test]
    async fn a_passed_deadline_is_answered_deadline_exceeded() {
        let mut svc = DeadlineLayer.layer(tower::service_fn(slow));
        let req = http::Request::builder().uri("/runtime.v1.ImageService/PullImage").header("grpc-timeout", "20m").body(()).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(2), svc.call(req)).await.expect("answered at the deadline").unwrap();
        assert_eq!(res.headers()["grpc-status"], "4", "{:?}", res.headers());

        // No deadline: the handler's own answer.
        let mut svc = DeadlineLayer.layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }));
        let res = svc.call(http::Request::new(())).await.unwrap();
        assert_eq!(res.into_body(), "ok");
    }
}
