//! berth's own telemetry: a small registry of atomic counters and histograms, a Prometheus text
//! encoder (exposition format 0.0.4) and the per-RPC gRPC instrumentation layer. A leaf module:
//! the image store counts pulls into it without importing anything above it.
//!
//! Layout: [`encode`] is the pure text encoder, [`grpc`] is the tower layer that counts every CRI
//! call. The opt-in `/metrics` HTTP endpoint is `server::metrics_http` (it reads the daemon's
//! containers), and the CRI ListMetricDescriptors / ListPodSandboxMetrics builders are
//! `stats::metrics` (cgroup figures as cAdvisor-named CRI metrics). The registry is one per process
//! ([`global`]); counting is a few relaxed atomic adds, so it runs whether or not the endpoint
//! is enabled.
//!
//! Why not the `prometheus` or `prometheus-client` crates: berth needs four families, a fixed
//! label set each and one histogram shape; 200 lines of atomics and an encoder cost less than a
//! dependency with its own registry model, and the encoder is unit-tested against the format.

pub mod encode;
pub mod grpc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `[metrics] address` is not an IP address.
    #[error("metrics.address: {address:?} is not an IP address")]
    BadAddress { address: String },
    /// The endpoint could not bind `address:port`.
    #[error("metrics endpoint: binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Upper bounds (seconds) of the gRPC latency histogram buckets: 1 ms to 2 min.
pub const GRPC_LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Upper bounds (seconds) of the image pull duration buckets: 100 ms to 10 min.
pub const PULL_DURATION_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Distinct gRPC method labels kept; calls to further method names count as `method="other"`,
/// so a client sending random paths cannot grow the registry without bound.
pub const MAX_METHODS: usize = 128;

/// gRPC status code names as grpc-go spells them (`codes.Code.String()`), indexed by code.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram over fixed bucket upper bounds (`le`), lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts: `buckets[i]` holds observations in `(bounds[i-1], bounds[i]]`;
    /// the last one (index `bounds.len()`) those above every bound.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations as f64 bits.
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// A histogram's figures at one moment, with cumulative bucket counts as the text format wants.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Bucket upper bounds, ascending, without `+Inf`.
    pub bounds: Vec<f64>,
    /// Cumulative count per bound, then the `+Inf` count (= `count`): `bounds.len() + 1` values.
    pub cumulative: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds, `+Inf` implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation `v` (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = self.sum_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The current figures. Under concurrent observations the snapshot may lag by the
    /// observations in flight; `count` is taken as the `+Inf` bucket so the two always agree.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for b in self.buckets.iter() {
            acc += b.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            cumulative,
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
            count: acc,
        }
    }
}

/// Counters of one gRPC method: calls by status code and the latency histogram.
#[derive(Debug)]
pub struct MethodStats {
    codes: [AtomicU64; 17],
    /// Seconds from request to response headers.
    pub latency: Histogram,
}

impl MethodStats {
    fn new() -> MethodStats {
        MethodStats { codes: Default::default(), latency: Histogram::new(GRPC_LATENCY_BUCKETS) }
    }

    /// Calls that ended with gRPC code `code` (0..=16; others count as Unknown).
    pub fn count(&self, code: usize) -> u64 {
        self.codes.get(code).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The process-wide metrics (see [`global`]).
#[derive(Debug)]
pub struct Registry {
    grpc: RwLock<HashMap<String, Arc<MethodStats>>>,
    /// `berth_image_pull_bytes_total`: compressed layer bytes downloaded by pulls.
    pub image_pull_bytes: Counter,
    /// `berth_image_pull_duration_seconds`: duration of successful pulls.
    pub image_pull_duration: Histogram,
    /// `berth_container_oom_kills_total`: container exits the monitor saw as OOM kills.
    pub oom_kills: Counter,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            grpc: RwLock::new(HashMap::new()),
            image_pull_bytes: Counter::default(),
            image_pull_duration: Histogram::new(PULL_DURATION_BUCKETS),
            oom_kills: Counter::default(),
        }
    }
}

impl Registry {
    /// Records one finished gRPC call of `method` (the RPC name, e.g. `RunPodSandbox`) with
    /// status `code` (0..=16, anything else counts as 2 Unknown) after `seconds`.
    pub fn observe_rpc(&self, method: &str, code: u32, seconds: f64) {
        let stats = self.method(method);
        let code = if (code as usize) < GRPC_CODE_NAMES.len() { code as usize } else { 2 };
        stats.codes[code].fetch_add(1, Ordering::Relaxed);
        stats.latency.observe(seconds);
    }

    fn method(&self, method: &str) -> Arc<MethodStats> {
        if let Some(s) = self.grpc.read().unwrap_or_else(|p| p.into_inner()).get(method) {
            return s.clone();
        }
        let mut m = self.grpc.write().unwrap_or_else(|p| p.into_inner());
        let key = if m.len() >= MAX_METHODS && !m.contains_key(method) { "other" } else { method };
        m.entry(key.to_string()).or_insert_with(|| Arc::new(MethodStats::new())).clone()
    }

    /// The per-method gRPC figures, sorted by method name.
    pub fn rpc_methods(&self) -> Vec<(String, Arc<MethodStats>)> {
        let mut v: Vec<_> = self.grpc.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Records one successful image pull that took `seconds`.
    pub fn observe_pull(&self, seconds: f64) {
        self.image_pull_duration.observe(seconds);
    }
}

/// The one registry of this process.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Hook for `container::apply_exit`: counts one OOM-killed container exit.
pub fn container_oom_killed() {
    global().oom_kills.add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static B: &[f64] = &[0.1, 1.0];
        let h = Histogram::new(B);
        for v in [0.05, 0.1, 0.5, 3.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 3, 4], "0.1 falls in le=0.1 (upper bound inclusive)");
        assert_eq!(s.count, 4);
        assert!((s.sum - 3.65).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn rpc_counts_by_code_and_method_cap() {
        let r = Registry::default();
        r.observe_rpc("Version", 0, 0.001);
        r.observe_rpc("Version", 5, 0.002);
        r.observe_rpc("Version", 99, 0.002);
        let m = r.rpc_methods();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].1.count(0), m[0].1.count(5), m[0].1.count(2)), (1, 1, 1));
        assert_eq!(m[0].1.latency.snapshot().count, 3);
        for i in 0..MAX_METHODS + 10 {
            r.observe_rpc(&format!("M{i}"), 0, 0.0);
        }
        let m = r.rpc_methods();
        assert!(m.len() <= MAX_METHODS + 1, "{}", m.len());
        assert!(m.iter().any(|(k, _)| k == "other"));
    }
}
