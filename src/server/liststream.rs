//! The server-streamed List RPCs of cri-api v0.36 (`StreamPodSandboxes`, `StreamContainers`,
//! `StreamContainerStats`, `StreamPodSandboxStats`, `StreamPodSandboxMetrics`, `StreamImages`;
//! KEP-5825, kubelet feature gate CRIListStreaming): the same items and filters as the List RPC,
//! sent in responses of at most [`BATCH`] items, so a node with many pods never meets the
//! 16 MiB message limit. As the proto asks, each item is in exactly one response, no response is
//! empty (no items: the stream ends at once), and the stream ends with EOF after the last.

use std::pin::Pin;
use tokio_stream::Stream;
use tonic::Status;

/// Items per response. 256 containers with their labels and annotations, or 256 stats entries,
/// stay far below 16 MiB.
pub const BATCH: usize = 256;

/// A finished server stream of responses.
pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `items` as a stream of responses built by `wrap`, [`BATCH`] items each.
pub fn batched<I, T>(items: Vec<I>, wrap: impl Fn(Vec<I>) -> T) -> ListStream<T>
where
    T: Send + 'static,
{
    let mut responses = Vec::with_capacity(items.len().div_ceil(BATCH));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        responses.push(Ok(wrap(items.by_ref().take(BATCH).collect())));
    }
    Box::pin(tokio_stream::iter(responses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn every_item_once_no_empty_response() {
        let got: Vec<Vec<u32>> = batched((0..600).collect(), |v| v).map(|r| r.unwrap()).collect().await;
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256, 88]);
        assert_eq!(got.concat(), (0..600).collect::<Vec<_>>());
        let none: Vec<Result<Vec<u32>, Status>> = batched(Vec::new(), |v| v).collect().await;
        assert!(none.is_empty());
    }
}
