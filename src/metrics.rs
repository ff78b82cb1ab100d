//! The filter's metrics, through the host's proxy-wasm metrics
//! (`proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`).
//! Kong's host keeps them in its shared `metrics` zone under
//! `pw:ping_auth:<name>`, summed over workers; Kong's Prometheus plugin
//! (with its Wasm metrics option) exports them, turning the `_<label>=<value>`
//! parts of a name into labels with the `label_patterns` of the filter's
//! `meta.json` ([`crate::config::METRIC_LABEL_PATTERNS`]).
//!
//! Every series is defined once per `on_configure` (defining an existing
//! name returns its id), so the hot path only increments known ids. A series
//! the host refused to define is skipped (logged once at configure time):
//! metrics never change what a request gets.

use crate::failure::policy::Class;
use crate::failure::{Call, Failure};
use crate::host::{Host, MetricKind};

/// What the client got for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// A failure of the policy server, by class (whatever the failure policy
    /// then did with it).
    Failed(Class),
    /// A failure on the filter's side (the request, the host, the upstream).
    FilterError,
}

/// Why the response hook's own upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Timeout,
    Unreachable,
    TooLarge,
}

/// The outcome a failure counts as.
pub fn outcome_of(failure: &Failure) -> Outcome {
    Class::of(failure).map_or(Outcome::FilterError, Outcome::Failed)
}

/// The response hook's upstream failures, by reason.
pub fn upstream_error(failure: &Failure) -> Option<UpstreamError> {
    match failure {
        Failure::UpstreamTimeout { .. } => Some(UpstreamError::Timeout),
        Failure::UpstreamFailed { .. } => Some(UpstreamError::Unreachable),
        Failure::UpstreamTooLarge { .. } => Some(UpstreamError::TooLarge),
        _ => None,
    }
}

/// One series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Decisions(Outcome),
    /// A sideband call's result: `None` = a usable reply.
    SidebandCalls(Call, Option<Class>),
    /// Milliseconds from a sideband call to its reply (or failure).
    Latency(Call),
    CacheHits,
    CacheMisses,
    CacheStaleServed,
    CacheEvictions,
    CacheStores,
    UpstreamErrors(UpstreamError),
}

const CLASSES: [Class; 5] = [
    Class::Unreachable,
    Class::ServerError,
    Class::ClientError,
    Class::MalformedReply,
    Class::RateLimited,
];
const UPSTREAM_ERRORS: [UpstreamError; 3] = [
    UpstreamError::Timeout,
    UpstreamError::Unreachable,
    UpstreamError::TooLarge,
];

impl Metric {
    /// Every series, in a fixed order ([`Metric::index`] is the position).
    pub fn all() -> Vec<Metric> {
        let mut all = vec![
            Metric::Decisions(Outcome::Allow),
            Metric::Decisions(Outcome::Deny),
        ];
        all.extend(CLASSES.map(|c| Metric::Decisions(Outcome::Failed(c))));
        all.push(Metric::Decisions(Outcome::FilterError));
        for e in [Call::Request, Call::Response] {
            all.push(Metric::SidebandCalls(e, None));
            all.extend(CLASSES.map(|c| Metric::SidebandCalls(e, Some(c))));
        }
        all.push(Metric::Latency(Call::Request));
        all.push(Metric::Latency(Call::Response));
        all.extend([
            Metric::CacheHits,
            Metric::CacheMisses,
            Metric::CacheStaleServed,
            Metric::CacheEvictions,
            Metric::CacheStores,
        ]);
        all.extend(UPSTREAM_ERRORS.map(Metric::UpstreamErrors));
        all
    }

    fn index(self) -> usize {
        let class = |c: Class| CLASSES.iter().position(|x| *x == c).unwrap_or(0);
        let calls = |e: Call| match e {
            Call::Request => 8,
            Call::Response => 14,
        };
        match self {
            Metric::Decisions(Outcome::Allow) => 0,
            Metric::Decisions(Outcome::Deny) => 1,
            Metric::Decisions(Outcome::Failed(c)) => 2 + class(c),
            Metric::Decisions(Outcome::FilterError) => 7,
            Metric::SidebandCalls(e, None) => calls(e),
            Metric::SidebandCalls(e, Some(c)) => calls(e) + 1 + class(c),
            Metric::Latency(Call::Request) => 20,
            Metric::Latency(Call::Response) => 21,
            Metric::CacheHits => 22,
            Metric::CacheMisses => 23,
            Metric::CacheStaleServed => 24,
            Metric::CacheEvictions => 25,
            Metric::CacheStores => 26,
            Metric::UpstreamErrors(u) => {
                27 + UPSTREAM_ERRORS.iter().position(|x| *x == u).unwrap_or(0)
            }
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::Latency(_) => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// The name defined with the host (Kong prefixes `pw:<filter>:`).
    pub fn name(self) -> String {
        match self {
            Metric::Decisions(o) => {
                let outcome = match o {
                    Outcome::Allow => "allow",
                    Outcome::Deny => "deny",
                    Outcome::Failed(c) => c.name(),
                    Outcome::FilterError => "filter_error",
                };
                format!("decisions_total_outcome={outcome}")
            }
            Metric::SidebandCalls(e, r) => format!(
                "sideband_calls_total_endpoint={}_result={}",
                e.path(),
                r.map_or("ok", Class::name)
            ),
            Metric::Latency(e) => {
                format!("sideband_latency_milliseconds_endpoint={}", e.path())
            }
            Metric::CacheHits => "cache_hits_total".into(),
            Metric::CacheMisses => "cache_misses_total".into(),
            Metric::CacheStaleServed => "cache_stale_served_total".into(),
            Metric::CacheEvictions => "cache_evictions_total".into(),
            Metric::CacheStores => "cache_stores_total".into(),
            Metric::UpstreamErrors(u) => format!(
                "upstream_errors_total_reason={}",
                match u {
                    UpstreamError::Timeout => "timeout",
                    UpstreamError::Unreachable => "unreachable",
                    UpstreamError::TooLarge => "too_large",
                }
            ),
        }
    }
}

/// The ids the host gave each series (`None`: not defined).
#[derive(Debug, Default)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every series; refusals are logged (one line) and skipped.
    pub fn define(h: &mut dyn Host) -> Metrics {
        let mut refused = Vec::new();
        let ids = Metric::all()
            .into_iter()
            .map(|m| match h.define_metric(m.kind(), &m.name()) {
                Ok(id) => Some(id),
                Err(why) => {
                    refused.push(format!("{} ({why})", m.name()));
                    None
                }
            })
            .collect();
        if !refused.is_empty() {
            log::warn!(
                "the host refused {} metric(s), they are not counted: {}",
                refused.len(),
                refused.join(", ")
            );
        }
        Metrics { ids }
    }

    fn id(&self, m: Metric) -> Option<u32> {
        self.ids.get(m.index()).copied().flatten()
    }

    /// Adds one to a counter.
    pub fn count(&self, h: &mut dyn Host, m: Metric) {
        self.add(h, m, 1);
    }

    pub fn add(&self, h: &mut dyn Host, m: Metric, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.id(m) {
            h.increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Records a histogram value.
    pub fn record(&self, h: &mut dyn Host, m: Metric, value: u64) {
        if let Some(id) = self.id(m) {
            h.record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_series_has_its_own_index_and_name() {
        let all = Metric::all();
        let indexes: Vec<usize> = all.iter().map(|m| m.index()).collect();
        assert_eq!(indexes, (0..all.len()).collect::<Vec<_>>());
        let names: HashSet<String> = all.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), all.len());
        for n in &names {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b"_=".contains(&b)),
                "{n}"
            );
        }
    }
}
