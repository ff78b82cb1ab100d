//! The host boundary: everything the filter reads from and asks of the proxy
//! host, as one small trait. The proxy-wasm adapter (`src/filter/`, Wasm only)
//! implements it over the host's ABI; [`mock`] implements it natively for the
//! exchange's unit tests. Log lines go through the `log` facade, whose logger
//! the adapter installs (the SDK's `set_log_level`).
//!
//! Nothing here decides anything: the exchange (`crate::exchange`) calls these
//! in the order each host step allows.

// The mock is also built for the fuzz targets (`fuzz/`, feature `mock`).
#[cfg(any(test, feature = "mock"))]
pub mod mock;

use std::time::{Duration, SystemTime};

/// The header maps the filter reads or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    /// The headers of a dispatch's response (`:status`, `:dispatch_status`, ...).
    CallResponseHeaders,
}

/// The body buffers the filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    CallResponse,
}

/// What a host step tells the host to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the request (or response) until the filter resumes or answers it.
    Pause,
}

/// The kind of a host metric (`proxy_define_metric`'s type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// A header map as the host handed it over: names as text (lossy), values as
/// bytes, and the number of pairs the host declared. The two counts differ
/// when the host truncated the map (Kong's host declares 100 and writes fewer
/// whole pairs, see [`HeaderMap::from_bytes`]).
///
/// The host's bytes are kept as they came and the pairs are read in place:
/// no copy per header (a cache hit reads the map and nothing else).
#[derive(Clone, Default)]
pub struct HeaderMap {
    /// The host's serialized map, then the lossy text of any name that is
    /// not UTF-8 (so that every name slice is text).
    bytes: Vec<u8>,
    /// Each pair's name and value, as `(start, end)` offsets into `bytes`.
    pairs: Vec<[(usize, usize); 2]>,
    pub declared: usize,
}

impl HeaderMap {
    /// The pairs in the host's order: name (text) and value (bytes).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone + '_ {
        // Names are text by construction (`from_bytes` and `from_pairs`).
        self.iter_bytes()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap_or_default(), v))
    }

    /// [`HeaderMap::iter`] with the names as bytes (nothing to check).
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.pairs.iter().map(|[(ns, ne), (vs, ve)]| {
            (
                self.bytes.get(*ns..*ne).unwrap_or_default(),
                self.bytes.get(*vs..*ve).unwrap_or_default(),
            )
        })
    }

    /// How many pairs the map holds (pseudo-headers included).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of each line of a header, by case-insensitive name
    /// (compared as bytes: no name is decoded).
    fn values<'m, 'n>(&'m self, name: &'n str) -> impl Iterator<Item = &'m [u8]> + use<'m, 'n> {
        self.iter_bytes()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of a header, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// [`HeaderMap::get`] as text (lossy).
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// How many lines of a header the map has (case-insensitive name).
    pub fn lines(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// A map of these pairs (the native mock's maps).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        declared: usize,
    ) -> HeaderMap {
        let mut map = HeaderMap {
            declared,
            ..HeaderMap::default()
        };
        for (name, value) in pairs {
            let n = map.append(name.as_bytes());
            let v = map.append(value);
            map.pairs.push([n, v]);
        }
        map
    }

    fn append(&mut self, bytes: &[u8]) -> (usize, usize) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        (start, self.bytes.len())
    }

    /// Decodes the proxy-wasm map layout: u32 count, count × (u32 name
    /// length, u32 value length), then each name and value followed by a NUL.
    /// A malformed map yields the pairs read so far: Kong's host sizes a
    /// truncated map's buffer for other pairs than it writes
    /// (`ngx_proxy_wasm_pairs_size` counts 100 list entries and one
    /// pseudo-header, the marshaller writes 4 pseudo-headers and 96 entries).
    /// A name that is not UTF-8 is read lossily.
    pub fn from_bytes(bytes: Vec<u8>) -> HeaderMap {
        let declared = read_u32(&bytes, 0).unwrap_or(0);
        let mut pairs = Vec::with_capacity(declared.min(128));
        // (pair, its name as text) for names that are not UTF-8: appended
        // after the whole map is read, so that no range of the host's bytes
        // can reach into them.
        let mut lossy = Vec::new();
        let mut data = 4usize.saturating_add(declared.saturating_mul(8));
        for i in 0..declared {
            let sizes = 4 + i * 8;
            let (Some(klen), Some(vlen)) = (read_u32(&bytes, sizes), read_u32(&bytes, sizes + 4))
            else {
                break;
            };
            let name = (data, data.saturating_add(klen));
            let Some(key) = bytes.get(name.0..name.1) else {
                break;
            };
            data = name.1.saturating_add(1);
            let value = (data, data.saturating_add(vlen));
            if bytes.get(value.0..value.1).is_none() {
                break;
            }
            data = value.1.saturating_add(1);
            if std::str::from_utf8(key).is_err() {
                lossy.push((pairs.len(), String::from_utf8_lossy(key).into_owned()));
            }
            pairs.push([name, value]);
        }
        let mut map = HeaderMap {
            bytes,
            pairs,
            declared,
        };
        for (i, text) in lossy {
            let name = map.append(text.as_bytes());
            if let Some([n, _]) = map.pairs.get_mut(i) {
                *n = name;
            }
        }
        map
    }
}

impl PartialEq for HeaderMap {
    fn eq(&self, other: &Self) -> bool {
        self.declared == other.declared && self.iter().eq(other.iter())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderMap")
            .field(
                "pairs",
                &self
                    .iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>(),
            )
            .field("declared", &self.declared)
            .finish()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let arr: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(arr)).ok()
}

/// An HTTP call the filter asks the host to make.
#[derive(Debug, Clone)]
pub struct Dispatch<'a> {
    /// `host:port` to connect to.
    pub address: &'a str,
    /// Pseudo-headers first.
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
    pub timeout: Duration,
}

/// The proxy host, as the filter needs it. Calls that change something never
/// fail loudly: a refusal is logged by the implementation and the exchange
/// goes on (the SDK's own wrappers would trap instead).
pub trait Host {
    fn header_map(&mut self, map: Map) -> HeaderMap;
    /// Replaces every value of a header (`Some`) or removes it (`None`).
    fn set_header(&mut self, map: Map, name: &str, value: Option<&str>);
    fn add_header(&mut self, map: Map, name: &str, value: &str);
    /// A property's bytes; `None` when the host has none or refuses.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// [`Host::property`] as text (lossy).
    fn property_text(&mut self, path: &[&str]) -> Option<String> {
        self.property(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    /// False when the host refused.
    fn set_property(&mut self, path: &[&str], value: &[u8]) -> bool;
    /// Up to `size` bytes of a body buffer; `None` when the host cannot hand
    /// it over (a body spooled to a file, a dispatch that timed out mid-body).
    fn body(&mut self, body: Body, size: usize) -> Option<Vec<u8>>;
    /// Drops `size` bytes from `start` of the current response-body chunk.
    fn cut_response_body(&mut self, start: usize, size: usize);
    /// Starts a call; its token, or the host's reason for refusing it.
    fn dispatch(&mut self, call: Dispatch<'_>) -> Result<u32, String>;
    /// Answers the client with a local response.
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: Option<&[u8]>);
    /// Lets a paused request go on to the upstream.
    fn resume_request(&mut self);
    fn now(&mut self) -> SystemTime;
    /// Defines (or finds) a metric by name; its id, or the host's reason.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, String>;
    /// Adds to a counter defined by [`Host::define_metric`].
    fn increment_metric(&mut self, id: u32, by: i64);
    /// Records a value in a histogram defined by [`Host::define_metric`].
    fn record_metric(&mut self, id: u32, value: u64);
}

/// Names a proxy-wasm status code for log lines.
pub fn status_name(code: u32) -> String {
    match code {
        1 => "NotFound".into(),
        2 => "BadArgument".into(),
        3 => "SerializationFailure".into(),
        4 => "ParseFailure".into(),
        7 => "Empty".into(),
        8 => "CasMismatch".into(),
        10 => "InternalFailure".into(),
        12 => "Unimplemented".into(),
        other => format!("status {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let raw: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        encode_raw(&raw)
    }

    fn encode_raw(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn a_name_that_is_not_text_is_read_lossily_and_the_pairs_after_it_stay_whole() {
        let bytes = encode_raw(&[
            (b"x-\xffbad", b"v\xfe1"),
            (b"host", b"a"),
            (b"x-after", b""),
        ]);
        let m = HeaderMap::from_bytes(bytes);
        let pairs: Vec<(&str, &[u8])> = m.iter().collect();
        assert_eq!(
            pairs,
            [
                ("x-\u{fffd}bad", &b"v\xfe1"[..]),
                ("host", b"a"),
                ("x-after", b""),
            ]
        );
        assert_eq!((m.len(), m.lines("HOST"), m.lines("x-none")), (3, 1, 0));
        assert_eq!(
            m,
            HeaderMap::from_pairs(pairs.iter().copied(), 3),
            "the same pairs from the mock's constructor"
        );
    }

    #[test]
    fn a_cut_value_stays_cut_after_a_name_that_is_not_text() {
        // The last value lacks 3 of its bytes; the lossy name's text (5
        // bytes, kept in the same buffer) must not make up for them.
        let bytes = encode_raw(&[(b"x-\xff", b"v"), (b"host", b"abcdef")]);
        let cut = HeaderMap::from_bytes(bytes[..bytes.len() - 3].to_vec());
        let pairs: Vec<(&str, &[u8])> = cut.iter().collect();
        assert_eq!(pairs, [("x-\u{fffd}", &b"v"[..])]);
        assert_eq!(cut.declared, 2);
    }

    #[test]
    fn maps_decode_and_a_cut_map_keeps_its_whole_pairs() {
        let bytes = encode(&[(":path", "/x"), ("Host", "a"), ("x-long", "0123456789")]);
        let m = HeaderMap::from_bytes(bytes.clone());
        assert_eq!(m.declared, 3);
        assert_eq!(m.text("host").as_deref(), Some("a"));
        let cut = HeaderMap::from_bytes(bytes[..bytes.len() - 6].to_vec());
        assert_eq!((cut.declared, cut.len()), (3, 2));
        assert_eq!(HeaderMap::from_bytes(vec![1, 0]), HeaderMap::default());
    }
}
