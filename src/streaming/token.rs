//! Single-use, expiring URL tokens for streaming requests (kubelet's `requestCache`:
//! 32 random bytes, URL-safe base64, valid for one minute, at most `MAX_TOKENS` in flight, the
//! oldest evicted first). A token is consumed by its first lookup; a used, unknown or expired
//! token is a 404 for the client.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token stays valid (kubelet `streaming.DefaultConfig.StreamIdleTimeout` is 4 h, its
/// request cache TTL is 1 minute: this is the latter).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How many unused tokens are kept; inserting more evicts the oldest (kubelet: 1000).
pub const MAX_TOKENS: usize = 1000;

/// The cache: generic over the request it stores so it can be unit-tested alone.
pub struct TokenCache<T> {
    ttl: Duration,
    max: usize,
    entries: Mutex<VecDeque<(String, Instant, T)>>,
}

/// Reading the random bytes for a token failed.
#[derive(Debug, thiserror::Error)]
#[error("stream token: reading 32 bytes from /dev/urandom: {0}")]
pub struct TokenError(#[from] std::io::Error);

fn random_token() -> Result<String, TokenError> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(crate::base64::encode_url(&buf))
}

impl<T> TokenCache<T> {
    /// A cache with kubelet's defaults ([`TOKEN_TTL`], [`MAX_TOKENS`]).
    pub fn new() -> Self {
        Self::with_limits(TOKEN_TTL, MAX_TOKENS)
    }

    /// A cache with a custom lifetime and bound (tests).
    pub fn with_limits(ttl: Duration, max: usize) -> Self {
        TokenCache { ttl, max: max.max(1), entries: Mutex::new(VecDeque::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Instant, T)>> {
        // A panic while holding the lock leaves a consistent deque: recover it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `req` and returns its fresh token (43 URL-safe characters).
    pub fn insert(&self, req: T) -> Result<String, TokenError> {
        let token = random_token()?;
        let now = Instant::now();
        let mut entries = self.lock();
        while entries.front().is_some_and(|(_, at, _)| now.duration_since(*at) > self.ttl) {
            entries.pop_front();
        }
        while entries.len() >= self.max {
            entries.pop_front();
        }
        entries.push_back((token.clone(), now, req));
        Ok(token)
    }

    /// Takes the request stored under `token`: `None` when unknown, already used or expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        let mut entries = self.lock();
        let pos = entries.iter().position(|(t, _, _)| t == token)?;
        let (_, at, req) = entries.remove(pos)?;
        (at.elapsed() <= self.ttl).then_some(req)
    }

    /// Number of tokens held (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Default for TokenCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use() {
        let c = TokenCache::new();
        let t = c.insert(7).unwrap();
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(c.consume(&t), Some(7));
        assert_eq!(c.consume(&t), None);
        assert_eq!(c.consume("nope"), None);
    }

    #[test]
    fn tokens_differ_and_expire() {
        let c = TokenCache::with_limits(Duration::from_millis(30), 10);
        let a = c.insert(1).unwrap();
        let b = c.insert(2).unwrap();
        assert_ne!(a, b);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.consume(&a), None);
        let _ = c.insert(3).unwrap();
        assert_eq!(c.len(), 1, "expired entries are dropped on insert");
        assert_eq!(c.consume(&b), None);
    }

    #[test]
    fn bounded_oldest_evicted() {
        let c = TokenCache::with_limits(TOKEN_TTL, 3);
        let toks: Vec<String> = (0..5).map(|i| c.insert(i).unwrap()).collect();
        assert_eq!(c.len(), 3);
        assert_eq!(c.consume(&toks[0]), None);
        assert_eq!(c.consume(&toks[1]), None);
        assert_eq!(c.consume(&toks[4]), Some(4));
    }
}
