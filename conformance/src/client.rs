//! CRI v1 gRPC clients over a unix socket (tonic 0.14, 16 MiB message limits as kubelet uses).

use anyhow::{Context, Result};
use berth::cri::v1::image_service_client::ImageServiceClient;
use berth::cri::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// Largest message either side may send (kubelet's limit).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The two CRI clients on one channel. Cheap to clone.
#[derive(Clone)]
pub struct Clients {
    /// `runtime.v1.RuntimeService`.
    pub rt: RuntimeServiceClient<Channel>,
    /// `runtime.v1.ImageService`.
    pub img: ImageServiceClient<Channel>,
}

/// Socket path of an endpoint given as `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

/// Connects to the CRI socket at `path`. Errors when the socket does not accept a connection.
pub async fn connect(path: &Path) -> Result<Clients> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connect to CRI socket {shown}"))?;
    Ok(Clients {
        rt: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE),
        img: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE),
    })
}
