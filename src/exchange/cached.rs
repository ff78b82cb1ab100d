//! The decision cache in the exchange: looking a request up before any
//! sideband call, replaying a cached decision, storing what the policy
//! server answered, and stale-if-error (`crate::cache` holds the entries).
//!
//! A request is looked up only when its decision can be cached: the cache is
//! on for this configuration (never with the response hook or in shadow
//! mode, see [`super::Shared::new`]), and the request has no body, or its
//! body is part of the key (`key_body`), when it is looked up at the body
//! step. A chunked request (its body may come after the gate) is never
//! cached.

use super::read::{self, Announced, Seen};
use super::{forward, Action, Exchange, Stage};
use crate::cache::{self, Decision, Key, KeyParts, Lookup};
use crate::config::{CacheConfig, Config};
use crate::failure::policy::Class;
use crate::failure::Failure;
use crate::host::{HeaderMap, Host};
use crate::http::Reply;
use crate::metrics::{Metric, Outcome};
use crate::protocol::decision::Directives;
use crate::slots;

/// The `Cache-Control` lines of a sideband reply, capping the configured TTL.
pub(super) fn reply_ttl(config: &Config, map: &HeaderMap) -> Option<u32> {
    let spec = config.cache.as_ref()?;
    let lines: Vec<String> = map
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    cache::ttl_from_cache_control(&lines, spec.ttl_secs)
}

/// An allow may be cached unless it changes the body (which fails on this
/// path). Its `state` is dropped: it is context for the response hook, and
/// the cache is never on with the hook (see [`super::Shared::new`]).
pub(super) fn storable(d: &Directives) -> bool {
    d.body.is_none()
}

/// What an allow is cached as: the directives a replay applies. `state`
/// (unused without the response hook), and the warnings and debug notes
/// (logged by the fresh call; notes may quote header values) are left out.
pub(super) fn cached_allow(d: &Directives) -> Directives {
    Directives {
        header_ops: d.header_ops.clone(),
        method: d.method.clone(),
        host: d.host.clone(),
        path: d.path.clone(),
        query: d.query.clone(),
        body: None,
        warnings: Vec::new(),
        notes: Vec::new(),
        state: None,
    }
}

/// The first 8 hex digits of a key, to tell entries apart in a log line.
fn short(key: &Key) -> String {
    key.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl Exchange {
    /// The cache's key and storage rules, when this configuration caches.
    fn cache_spec<'c>(&self, config: &'c Config) -> Option<&'c CacheConfig> {
        self.shared.cache.borrow().as_ref()?;
        config.cache.as_ref()
    }

    /// The headers step: a request without a body is looked up. A hit is
    /// replayed (`Err(action)`: the step's answer); a miss gives the key
    /// the decision will be stored under.
    pub(super) fn lookup_headers(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        map: &HeaderMap,
    ) -> Result<Option<Key>, Action> {
        let Some(spec) = self.cache_spec(config) else {
            return Ok(None);
        };
        if read::truncated(map) || read::announced(map) != Announced::None {
            return Ok(None);
        }
        let ip = spec.key_client_ip.then(|| read::client_ip(h));
        let marker = &config.failure_policy.marker_header;
        let headers = map
            .iter_bytes()
            .filter(|(n, _)| !n.starts_with(b":") && !n.eq_ignore_ascii_case(marker.as_bytes()));
        let key = cache::key(
            &config.identity,
            spec,
            KeyParts {
                method: map.get(":method").unwrap_or_default(),
                target: map.get(":path").unwrap_or_default(),
                headers,
                client_ip: ip.as_deref(),
                body: None,
            },
        );
        match self.look_up(h, &key) {
            Some(decision) => {
                // Header directives need to know which headers the request
                // has (set or add): counted on the map, nothing copied.
                // As the policy server saw them: without the marker header.
                let lines = |name: &str| match name.eq_ignore_ascii_case(marker) {
                    true => 0,
                    false => map.lines(name),
                };
                let markers = map.lines(marker);
                Err(self.replay(h, config, &decision, &lines, markers))
            }
            None => Ok(Some(key)),
        }
    }

    /// The body step, when the body is part of the key.
    pub(super) fn lookup_body(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: &mut Seen,
    ) -> Option<Action> {
        let spec = self.cache_spec(config).filter(|s| s.key_body)?;
        let body = seen.request.body.as_deref()?;
        let headers = seen
            .all_headers
            .iter()
            .map(|hd| (hd.name.as_bytes(), hd.value.as_slice()));
        let key = cache::key(
            &config.identity,
            spec,
            KeyParts {
                method: seen.request.method.as_bytes(),
                target: seen.client_target.as_bytes(),
                headers,
                client_ip: Some(&seen.request.source_ip),
                body: Some(body),
            },
        );
        match self.look_up(h, &key) {
            Some(decision) => {
                let lines = slots::lines_in(&seen.request.headers);
                Some(self.replay(h, config, &decision, &lines, seen.client_markers))
            }
            None => {
                seen.cache_key = Some(key);
                None
            }
        }
    }

    fn look_up(&mut self, h: &mut dyn Host, key: &Key) -> Option<std::rc::Rc<Decision>> {
        let now = h.now();
        let found = match self.shared.cache.borrow_mut().as_mut()?.lookup(key, now) {
            Lookup::Fresh(d) => Some(d),
            Lookup::Miss => None,
        };
        let metric = if found.is_some() {
            Metric::CacheHits
        } else {
            Metric::CacheMisses
        };
        self.count(h, metric);
        found
    }

    /// Does what the cached decision says, as a fresh reply would have:
    /// an allow's directives on the current request, or the deny's reply.
    /// Returns the step's answer.
    fn replay(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        decision: &Decision,
        lines: &dyn Fn(&str) -> usize,
        client_markers: usize,
    ) -> Action {
        match decision {
            Decision::Allow(d) => {
                if let Err(f) = forward::apply(h, lines, d) {
                    self.fail(h, f);
                    return Action::Pause;
                }
                forward::mark(
                    h,
                    &config.failure_policy.marker_header,
                    client_markers,
                    None,
                );
                self.outcome(h, Outcome::Allow);
                if config.enable_debug_logging {
                    log::debug!("Request authorized from the decision cache.");
                }
                self.stage = Stage::Forwarded;
                Action::Continue
            }
            Decision::Deny(reply) => {
                self.outcome(h, Outcome::Deny);
                if config.enable_debug_logging {
                    log::debug!(
                        "Request denied from the decision cache, returning status {} to client.",
                        reply.status
                    );
                }
                self.send(h, reply.clone());
                Action::Pause
            }
        }
    }

    /// A fresh answer for `key` came: whatever was cached for it goes, so
    /// that an old allow can never outlive a newer answer (stale-if-error
    /// included) when the newer one is not stored.
    pub(super) fn forget(&mut self, key: &Key) {
        if let Some(c) = self.shared.cache.borrow_mut().as_mut() {
            c.forget(key);
        }
    }

    fn store(&mut self, h: &mut dyn Host, key: Key, decision: Decision, ttl: u32) {
        let now = h.now();
        let stored = match self.shared.cache.borrow_mut().as_mut() {
            Some(c) => c.store(key, decision, ttl, now),
            None => return,
        };
        if stored.stored {
            self.count(h, Metric::CacheStores);
        }
        if stored.evicted {
            self.count(h, Metric::CacheEvictions);
        }
    }

    pub(super) fn store_allow(&mut self, h: &mut dyn Host, key: Key, d: Directives, ttl: u32) {
        self.store(h, key, Decision::Allow(d), ttl);
    }

    /// A deny is stored only with `cache_denies`.
    pub(super) fn store_deny(&mut self, h: &mut dyn Host, key: Key, reply: &Reply, ttl: u32) {
        let denies = self
            .shared
            .cache
            .borrow()
            .as_ref()
            .is_some_and(|c| c.spec().cache_denies);
        if denies {
            self.store(h, key, Decision::Deny(reply.clone()), ttl);
        }
    }

    /// Stale-if-error: the policy server could not be reached, timed out or
    /// answered 5xx, and this request's key has an allow that expired less
    /// than `stale_if_error_seconds` ago. It is served (logged the first
    /// time for each entry, counted every time). `None`: nothing to serve.
    pub(super) fn serve_stale(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: &Seen,
        failure: &Failure,
    ) -> Option<Action> {
        let key = seen.cache_key?;
        let class = Class::of(failure)?;
        // A 5xx is an outage whatever its body (a proxy's HTML 503 is read
        // as "not JSON").
        let outage = matches!(class, Class::Unreachable | Class::ServerError)
            || matches!(failure, Failure::NotJson { status, .. } if *status >= 500);
        if !outage {
            return None;
        }
        let now = h.now();
        let stale = self
            .shared
            .cache
            .borrow_mut()
            .as_mut()?
            .stale_allow(&key, now)?;
        if stale.first {
            log::warn!(
                "serving a cached allow (entry {}) {} s past its expiry because the policy server \
                 failed ({}); stale_if_error_seconds={}; later stale serves of this entry are \
                 counted in cache_stale_served_total, not logged",
                short(&key),
                stale.age_past_expiry,
                class.name(),
                config.cache.as_ref().map_or(0, |c| c.stale_if_error_secs)
            );
        }
        self.count(h, Metric::CacheStaleServed);
        Some(self.replay(
            h,
            config,
            &stale.directives,
            &slots::lines_in(&seen.request.headers),
            seen.client_markers,
        ))
    }
}
