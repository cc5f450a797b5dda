//! A cleanup stack: every step that creates something pushes its undo; on failure the undos run
//! in reverse order, on success [`Cleanup::commit`] drops them.
//!
//! Undo steps must be idempotent: restart recovery may run the same undo again on a half-done
//! object, and an undo must tolerate "already gone".

use std::future::Future;
use std::pin::Pin;

type Step<'a> = (String, Pin<Box<dyn Future<Output = ()> + Send + 'a>>);

/// Undo steps of one operation that is not finished yet.
#[derive(Default)]
pub struct Cleanup<'a> {
    steps: Vec<Step<'a>>,
}

impl<'a> Cleanup<'a> {
    /// An empty stack.
    pub fn new() -> Self {
        Cleanup { steps: Vec::new() }
    }

    /// Pushes an undo step. The future is not polled until [`Cleanup::run`].
    pub fn push(&mut self, what: impl Into<String>, undo: impl Future<Output = ()> + Send + 'a) {
        self.steps.push((what.into(), Box::pin(undo)));
    }

    /// The operation succeeded: forget every undo.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// The operation failed: run every undo, last pushed first.
    pub async fn run(mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            tracing::debug!(step = %what, "undoing");
            undo.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn runs_in_reverse_and_commit_forgets() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut c = Cleanup::new();
        for i in 0..3 {
            let log = log.clone();
            c.push(format!("step {i}"), async move { log.lock().unwrap().push(i) });
        }
        c.run().await;
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut c = Cleanup::new();
        let l2 = log.clone();
        c.push("never", async move { l2.lock().unwrap().push(99) });
        c.commit();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
