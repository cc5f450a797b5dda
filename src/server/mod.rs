//! gRPC adapters only: CRI RuntimeService ([`runtime`]) and ImageService ([`image`]), the
//! mapping of domain errors to gRPC status codes ([`status`]), and the unix-socket server.

pub mod authority;
pub mod convert;
pub mod deadline;
pub mod image;
pub mod liststream;
pub mod metrics_http;
pub mod runtime;
pub mod status;

use crate::cri::v1::image_service_server::ImageServiceServer;
use crate::cri::v1::runtime_service_server::RuntimeServiceServer;
use crate::daemon::Daemon;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Largest gRPC message accepted or sent: 16 MiB, as kubelet configures its client.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Serves CRI RuntimeService and ImageService on the unix socket `listen` (mode 0660) until
/// `shutdown` completes; Exec, Attach and PortForward hand out URLs of `streaming`. A stale socket file is replaced; its parent directory is created.
pub async fn serve(
    d: Arc<Daemon>,
    streaming: Arc<crate::streaming::server::StreamingServer>,
    listen: &Path,
    shutdown: impl Future<Output = ()> + Send,
    on_listening: impl FnOnce(),
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = listen.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(listen) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", listen.display()))
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(listen).with_context(|| format!("binding {}", listen.display()))?;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o660)).with_context(|| format!("chmod 0660 {}", listen.display()))?;
    // Every connection goes through the :authority fix, so any gRPC client's unix-socket
    // convention (kubelet 1.26 sends the socket path) is served, as containerd and CRI-O do.
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |conn| {
        conn.map(authority::NormalizeAuthority::new)
    });
    let runtime = RuntimeServiceServer::new(runtime::RuntimeServer::new(d.clone(), streaming))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let images = ImageServiceServer::new(image::ImageServer::new(d.images.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    tracing::info!(socket = %listen.display(), "serving CRI");
    // Bound and listening: a client connecting now is queued and served.
    on_listening();
    tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        // Per-RPC counts by gRPC code and latency for the /metrics endpoint (metrics::grpc).
        .layer(crate::metrics::grpc::GrpcMetricsLayer)
        // A call whose deadline passed is answered DEADLINE_EXCEEDED, not tonic's CANCELLED.
        .layer(deadline::DeadlineLayer)
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")?;
    let _ = std::fs::remove_file(listen);
    Ok(())
}
