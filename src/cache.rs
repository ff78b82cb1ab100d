//! The decision cache: what the policy server answered for a request, kept
//! for later requests with the same key (opt-in, `cache.enabled`).
//!
//! - **Key**: SHA-256 over the configuration's identity and the parts the
//!   operator selects (method, path with or without query, named request
//!   headers with every value, client IP, a body digest), each length-prefixed
//!   so two different requests never hash the same bytes. Only the digest is
//!   kept: no credential is stored or logged in clear.
//! - **Value**: an allow with its directives, or (with `cache_denies`) a
//!   deny with its response, exactly as the reply was read: replaying it does
//!   what a fresh call with the same reply would do.
//! - **Lifetime**: `ttl_seconds`, shortened by the reply's `Cache-Control`
//!   ([`ttl_from_cache_control`]); an entry is then kept
//!   `stale_if_error_seconds` longer, for [`DecisionCache::stale_allow`] only.
//! - **Bounds**: at most `max_entries` entries per cache (one cache per filter
//!   configuration per worker); when full, one entry is evicted by CLOCK
//!   (second chance, an approximation of least-recently-used): a hand sweeps
//!   the entries, sparing once each one used since it last passed and
//!   evicting the first one that was not. A decision bigger than [`MAX_ENTRY_BYTES`] is not stored, so
//!   memory stays under `max_entries` × ([`MAX_ENTRY_BYTES`] + [`ENTRY_OVERHEAD`]).
//!
//! Worker-local by design: a hit costs no host call and no copy, and a
//! worker's cache dies with its Wasm instance (a trap) like the rest of its
//! state. Nothing here calls the host; the exchange decides when to look up.

use crate::config::CacheConfig;
use crate::http::Reply;
use crate::protocol::decision::{Directives, HeaderOp};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// A cache key: the SHA-256 digest of the key material.
pub type Key = [u8; 32];

/// The largest decision stored (its header values, path, query, deny body).
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;
/// What one entry costs beside its decision's bytes: the key twice (map and
/// recency index), timestamps, map and tree slots. An upper estimate.
pub const ENTRY_OVERHEAD: usize = 256;

/// A cached decision.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Directives),
    Deny(Reply),
}

impl Decision {
    /// The bytes the decision holds (an estimate of its heap size).
    fn size(&self) -> usize {
        match self {
            Decision::Allow(d) => {
                let ops: usize = d
                    .header_ops
                    .iter()
                    .map(|op| match op {
                        HeaderOp::Remove(n) => n.len() + 24,
                        HeaderOp::Set(n, vs) => {
                            n.len() + 48 + vs.iter().map(|v| v.len() + 24).sum::<usize>()
                        }
                    })
                    .sum();
                let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
                ops + opt(&d.method) + opt(&d.host) + opt(&d.path) + opt(&d.query)
            }
            Decision::Deny(r) => {
                r.body.len()
                    + r.headers
                        .iter()
                        .map(|(n, v)| n.len() + v.len() + 48)
                        .sum::<usize>()
            }
        }
    }
}

/// The parts of a request the key may cover, as the exchange read them.
pub struct KeyParts<'a, I> {
    pub method: &'a [u8],
    /// The request target as the client sent it (path and query).
    pub target: &'a [u8],
    /// The request's headers, in order (names in any case, as bytes).
    pub headers: I,
    pub client_ip: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

/// Field tags: a part the key leaves out hashes nothing, one it covers
/// hashes its tag first, so `path=""` and "no path" differ.
const TAG_METHOD: u8 = 1;
const TAG_TARGET: u8 = 2;
const TAG_HEADER: u8 = 3;
const TAG_CLIENT_IP: u8 = 4;
const TAG_BODY: u8 = 5;

/// The start of every key of one configuration: its identity and a fixed
/// label, exactly one SHA-256 block, absorbed once when the configuration is
/// compiled; each key continues from a copy of that state (one block less to
/// hash per request).
#[derive(Clone)]
pub struct KeySalt(Sha256);

/// Fills the salt's block to 64 bytes after the 32-byte identity.
const SALT_LABEL: &[u8; 32] = b"ping-auth decision cache key v1\0";

impl KeySalt {
    /// `identity`: the configuration's SHA-256.
    pub fn new(identity: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(identity);
        h.update(SALT_LABEL);
        KeySalt(h)
    }
}

impl std::fmt::Debug for KeySalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySalt(..)")
    }
}

fn put(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
    h.update(bytes);
}

/// The key of a request under `spec`, salted with the configuration's
/// identity.
pub fn key<'a, I>(salt: &KeySalt, spec: &CacheConfig, parts: KeyParts<'a, I>) -> Key
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let mut h = salt.0.clone();
    if spec.key_method {
        put(&mut h, TAG_METHOD, parts.method);
    }
    if spec.key_path {
        let target = if spec.key_query {
            parts.target
        } else {
            parts
                .target
                .split(|b| *b == b'?')
                .next()
                .unwrap_or_default()
        };
        put(&mut h, TAG_TARGET, target);
    }
    for name in &spec.key_headers {
        put(&mut h, TAG_HEADER, name.as_bytes());
        // Every value in order, then how many there were.
        let mut n: u64 = 0;
        for (_, value) in parts
            .headers
            .clone()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            put(&mut h, TAG_HEADER, value);
            n += 1;
        }
        h.update(n.to_le_bytes());
    }
    if spec.key_client_ip {
        put(
            &mut h,
            TAG_CLIENT_IP,
            parts.client_ip.unwrap_or_default().as_bytes(),
        );
    }
    if spec.key_body {
        let digest = Sha256::digest(parts.body.unwrap_or_default());
        put(&mut h, TAG_BODY, &digest);
    }
    h.finalize().into()
}

/// How long a reply may be cached: `configured` seconds, shortened by the
/// reply's `Cache-Control` values (every line joined). `None`: not stored
/// (`no-store`, `no-cache`, `private`, `max-age=0`, or an age that cannot be
/// read, which RFC 9111 §4.2.1 says to treat as stale). `s-maxage` wins over
/// `max-age`: the filter is a shared cache.
pub fn ttl_from_cache_control(values: &[&str], configured: u32) -> Option<u32> {
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in values.iter().flat_map(|v| v.split(',')) {
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let age = || {
            arg.and_then(|a| {
                (!a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| a.parse::<u64>().unwrap_or(u64::MAX))
            })
            .unwrap_or(0)
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" | "no-cache" | "private" => return None,
            "max-age" => max_age = Some(max_age.map_or(age(), |m: u64| m.min(age()))),
            "s-maxage" => s_maxage = Some(s_maxage.map_or(age(), |m: u64| m.min(age()))),
            _ => {}
        }
    }
    let ttl = match s_maxage.or(max_age) {
        Some(age) => u64::from(configured).min(age),
        None => u64::from(configured),
    };
    u32::try_from(ttl).ok().filter(|t| *t > 0)
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Fresh(Rc<Decision>),
    /// Nothing fresh: ask the policy server.
    Miss,
}

/// A stale allow handed out because the policy server failed.
#[derive(Debug)]
pub struct Stale {
    pub directives: Rc<Decision>,
    /// Seconds past its expiry.
    pub age_past_expiry: u64,
    /// True the first time this entry is served stale (log it then only).
    pub first: bool,
}

#[derive(Debug)]
struct Entry {
    decision: Rc<Decision>,
    fresh_until: SystemTime,
    stale_until: SystemTime,
    /// Position in the clock ring.
    slot: usize,
    /// Used since the clock hand last passed.
    used: bool,
    size: usize,
    stale_logged: bool,
}

/// What storing did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub stored: bool,
    /// Whether an entry was dropped to make room.
    pub evicted: bool,
}

/// One filter configuration's cache in one worker.
#[derive(Debug)]
pub struct DecisionCache {
    spec: CacheConfig,
    entries: HashMap<Key, Entry>,
    /// Every key once, in no particular order; the clock hand sweeps it.
    ring: Vec<Key>,
    hand: usize,
    bytes: usize,
}

impl DecisionCache {
    pub fn new(spec: CacheConfig) -> Self {
        DecisionCache {
            spec,
            entries: HashMap::new(),
            ring: Vec::new(),
            hand: 0,
            bytes: 0,
        }
    }

    pub fn spec(&self) -> &CacheConfig {
        &self.spec
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The decisions' bytes plus [`ENTRY_OVERHEAD`] per entry.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops an entry; the ring's last key takes its slot.
    /// Drops the entry of `key`, if any: a fresh answer for the key
    /// replaces what was cached, even when it is not itself stored.
    pub fn forget(&mut self, key: &Key) {
        self.remove(key);
    }

    fn remove(&mut self, key: &Key) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(e.size);
        self.ring.swap_remove(e.slot);
        if let Some(moved) = self.ring.get(e.slot) {
            if let Some(m) = self.entries.get_mut(moved) {
                m.slot = e.slot;
            }
        }
    }

    /// The clock's victim: the first key from the hand on not used since
    /// the hand last passed (marks are cleared on the way).
    fn victim(&mut self) -> Option<Key> {
        for _ in 0..=self.ring.len() {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let key = *self.ring.get(self.hand)?;
            self.hand += 1;
            match self.entries.get_mut(&key) {
                Some(e) if e.used => e.used = false,
                _ => return Some(key),
            }
        }
        self.ring.first().copied()
    }

    pub fn lookup(&mut self, key: &Key, now: SystemTime) -> Lookup {
        let Some(e) = self.entries.get_mut(key) else {
            return Lookup::Miss;
        };
        if now < e.fresh_until {
            e.used = true;
            return Lookup::Fresh(e.decision.clone());
        }
        if now >= e.stale_until {
            self.remove(key);
        }
        Lookup::Miss
    }

    /// A cached allow past its expiry but within `stale_if_error_seconds` of
    /// it, for a request whose policy call failed. Never a deny, never an
    /// entry past that bound.
    pub fn stale_allow(&mut self, key: &Key, now: SystemTime) -> Option<Stale> {
        let e = self.entries.get_mut(key)?;
        if now >= e.stale_until || !matches!(*e.decision, Decision::Allow(_)) {
            return None;
        }
        let first = !e.stale_logged;
        e.stale_logged = true;
        e.used = true;
        let age_past_expiry = now.duration_since(e.fresh_until).map_or(0, |d| d.as_secs());
        Some(Stale {
            directives: e.decision.clone(),
            age_past_expiry,
            first,
        })
    }

    /// Stores `decision` for `ttl_secs` (already capped by the reply).
    pub fn store(
        &mut self,
        key: Key,
        decision: Decision,
        ttl_secs: u32,
        now: SystemTime,
    ) -> Stored {
        let size = decision.size();
        if size > MAX_ENTRY_BYTES {
            return Stored::default();
        }
        self.remove(&key);
        let mut evicted = false;
        if self.entries.len() >= self.spec.max_entries.max(1) {
            if let Some(victim) = self.victim() {
                self.remove(&victim);
                evicted = true;
            }
        }
        let fresh_until = now + Duration::from_secs(u64::from(ttl_secs));
        let stale_until =
            fresh_until + Duration::from_secs(u64::from(self.spec.stale_if_error_secs));
        let size = size + ENTRY_OVERHEAD;
        self.ring.push(key);
        self.entries.insert(
            key,
            Entry {
                decision: Rc::new(decision),
                fresh_until,
                stale_until,
                slot: self.ring.len() - 1,
                used: false,
                size,
                stale_logged: false,
            },
        );
        self.bytes += size;
        Stored {
            stored: true,
            evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CacheConfig {
        CacheConfig {
            ttl_secs: 60,
            max_entries: 3,
            stale_if_error_secs: 30,
            cache_denies: false,
            key_method: true,
            key_path: true,
            key_query: true,
            key_headers: vec!["authorization".into()],
            key_client_ip: false,
            key_body: false,
        }
    }

    fn k(spec: &CacheConfig, target: &str, headers: &[(&str, &str)]) -> Key {
        let hs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        key(
            &KeySalt::new(&[7; 32]),
            spec,
            KeyParts {
                method: b"GET",
                target: target.as_bytes(),
                headers: hs.iter().copied(),
                client_ip: Some("10.0.0.1"),
                body: None,
            },
        )
    }

    fn allow(tag: &str) -> Decision {
        Decision::Allow(Directives {
            header_ops: vec![HeaderOp::Set("x-tag".into(), vec![tag.into()])],
            ..Directives::default()
        })
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn keys_separate_what_the_spec_covers_and_only_that() {
        let s = spec();
        let a = k(&s, "/x?a=1", &[("authorization", "Bearer A")]);
        assert_eq!(
            a,
            k(&s, "/x?a=1", &[("authorization", "Bearer A"), ("ua", "z")])
        );
        assert_ne!(a, k(&s, "/x?a=1", &[("authorization", "Bearer B")]));
        assert_ne!(a, k(&s, "/x?a=2", &[("authorization", "Bearer A")]));
        assert_ne!(a, k(&s, "/x?a=1", &[]));
        // Names match in any case: the host may hand them over as sent.
        assert_eq!(a, k(&s, "/x?a=1", &[("Authorization", "Bearer A")]));
        assert_ne!(
            k(&s, "/x?a=1", &[("Authorization", "Bearer B")]),
            k(&s, "/x?a=1", &[("Authorization", "Bearer C")])
        );
        // Two values are not one value that contains both.
        assert_ne!(
            k(&s, "/", &[("authorization", "a"), ("authorization", "b")]),
            k(&s, "/", &[("authorization", "ab")])
        );
        let no_query = CacheConfig {
            key_query: false,
            ..spec()
        };
        assert_eq!(
            k(&no_query, "/x?a=1", &[("authorization", "A")]),
            k(&no_query, "/x?b=2", &[("authorization", "A")])
        );
        let other_identity = key(
            &KeySalt::new(&[8; 32]),
            &s,
            KeyParts {
                method: b"GET",
                target: b"/x?a=1",
                headers: [(b"authorization".as_slice(), b"Bearer A".as_slice())].into_iter(),
                client_ip: None,
                body: None,
            },
        );
        assert_ne!(a, other_identity);
    }

    #[test]
    fn cache_control_only_shortens_and_can_forbid() {
        assert_eq!(ttl_from_cache_control(&[], 60), Some(60));
        assert_eq!(ttl_from_cache_control(&["max-age=10"], 60), Some(10));
        assert_eq!(ttl_from_cache_control(&["max-age=600"], 60), Some(60));
        assert_eq!(
            ttl_from_cache_control(&["max-age=10, s-maxage=20"], 60),
            Some(20)
        );
        assert_eq!(
            ttl_from_cache_control(&["public", "Max-Age=\"5\""], 60),
            Some(5)
        );
        for none in [
            "no-store",
            "No-Cache",
            "private",
            "max-age=0",
            "max-age=soon",
            "max-age=10, no-store",
        ] {
            assert_eq!(ttl_from_cache_control(&[none], 60), None, "{none}");
        }
    }

    #[test]
    fn fresh_then_stale_only_for_allows_within_the_bound() {
        let s = spec();
        let mut c = DecisionCache::new(s.clone());
        let a = k(&s, "/a", &[]);
        let d = k(&s, "/d", &[]);
        c.store(a, allow("1"), 10, at(0));
        c.store(d, Decision::Deny(Reply::empty(403)), 10, at(0));
        assert!(matches!(c.lookup(&a, at(9)), Lookup::Fresh(_)));
        assert!(matches!(c.lookup(&a, at(10)), Lookup::Miss));
        let first = c.stale_allow(&a, at(15)).unwrap();
        assert!(first.first);
        assert_eq!(first.age_past_expiry, 5);
        assert!(!c.stale_allow(&a, at(39)).unwrap().first);
        assert!(c.stale_allow(&a, at(40)).is_none());
        assert!(c.stale_allow(&d, at(15)).is_none());
        // Past the stale bound a lookup drops the entry.
        assert!(matches!(c.lookup(&a, at(40)), Lookup::Miss));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_clock_spares_used_entries_and_memory_is_counted() {
        let s = spec();
        let mut c = DecisionCache::new(s.clone());
        let keys: Vec<Key> = (0..6).map(|i| k(&s, &format!("/{i}"), &[])).collect();
        for key in &keys[..3] {
            assert!(!c.store(*key, allow("x"), 60, at(0)).evicted);
        }
        // Use the oldest: the hand spares it and takes the second.
        assert!(matches!(c.lookup(&keys[0], at(1)), Lookup::Fresh(_)));
        assert_eq!(
            c.store(keys[3], allow("y"), 60, at(1)),
            Stored {
                stored: true,
                evicted: true
            }
        );
        assert!(matches!(c.lookup(&keys[1], at(2)), Lookup::Miss));
        assert!(matches!(c.lookup(&keys[0], at(2)), Lookup::Fresh(_)));
        assert_eq!(c.len(), 3);
        let per_entry = ENTRY_OVERHEAD + "x-tag".len() + 48 + 1 + 24;
        assert_eq!(c.bytes(), 3 * per_entry);
        // Re-storing a key replaces it without eviction.
        assert!(!c.store(keys[0], allow("z"), 60, at(3)).evicted);
        assert_eq!(c.len(), 3);
        // Every entry used: the hand clears each mark once and evicts the
        // first it meets again; the cache never grows past its bound.
        for key in [&keys[0], &keys[2], &keys[3]] {
            assert!(matches!(c.lookup(key, at(4)), Lookup::Fresh(_)));
        }
        assert!(c.store(keys[4], allow("w"), 60, at(4)).evicted);
        assert!(c.store(keys[5], allow("v"), 60, at(4)).evicted);
        assert_eq!(c.len(), 3);
        // Expired past the stale bound: dropped on lookup, its slot reused.
        assert!(matches!(c.lookup(&keys[5], at(100)), Lookup::Miss));
        assert_eq!(c.len(), 2);
        assert!(!c.store(keys[1], allow("u"), 60, at(100)).evicted);
        assert!(matches!(c.lookup(&keys[1], at(101)), Lookup::Fresh(_)));
        // Too big to keep.
        let big = Decision::Deny(Reply {
            status: 403,
            headers: vec![],
            body: vec![b'x'; MAX_ENTRY_BYTES + 1],
        });
        assert!(!c.store(keys[1], big, 60, at(3)).stored);
    }
}
