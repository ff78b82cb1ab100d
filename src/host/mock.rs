//! A native host for the exchange's unit tests: it holds the facts a test
//! sets (header maps, properties, bodies, time), records every action the
//! filter asks of it, and captures the log lines written through `log`.

use super::{Body, Dispatch, HeaderMap, Host, Map, MetricKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// An action the filter asked the host to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SetHeader(Map, String, Option<String>),
    AddHeader(Map, String, String),
    SetProperty(String, Vec<u8>),
    CutResponseBody(usize, usize),
    Dispatch(Call),
    Send(Sent),
    Resume,
}

/// A recorded dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub address: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A recorded local response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

#[derive(Default)]
pub struct MockHost {
    pub maps: HashMap<Map, Vec<(String, Vec<u8>)>>,
    /// Overrides the declared count of the request map (a truncated map).
    pub declared_request_pairs: Option<usize>,
    /// Property paths joined with `.`.
    pub properties: HashMap<String, Vec<u8>>,
    pub request_body: Option<Vec<u8>>,
    pub call_body: Vec<u8>,
    /// Properties the host refuses to set.
    pub read_only: Vec<String>,
    /// `Some(reason)`: every dispatch is refused.
    pub refuse_dispatch: Option<String>,
    pub now: Option<SystemTime>,
    pub effects: Vec<Effect>,
    next_token: u32,
    /// Defined metrics: name, kind, and the counter's value or every value
    /// recorded. The id is the position.
    pub metrics: Vec<(String, MetricKind, Vec<u64>)>,
    /// Every increment asked for, by id, in order (also for ids this host did
    /// not define: the exchange's metric ids come from the root's host).
    pub metric_increments: Vec<(u32, i64)>,
}

impl MockHost {
    /// A host with a client request: pseudo-headers from `method` and
    /// `path`, then `headers`.
    pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> MockHost {
        let mut h = MockHost::default();
        let mut pairs = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
            (":authority".to_string(), b"api.example".to_vec()),
        ];
        pairs.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        h.maps.insert(Map::RequestHeaders, pairs);
        h.prop("source.address", "10.0.0.7");
        h.prop("source.port", "5555");
        h
    }

    pub fn prop(&mut self, path: &str, value: &str) {
        self.properties
            .insert(path.to_string(), value.as_bytes().to_vec());
    }

    /// The reply to the next dispatch the filter reads: `:status` (or a
    /// failed call with `:dispatch_status`), headers and body.
    pub fn call_reply(&mut self, status: Option<u16>, headers: &[(&str, &str)], body: &[u8]) {
        let mut pairs = Vec::new();
        match status {
            Some(s) => pairs.push((":status".to_string(), s.to_string().into_bytes())),
            None => pairs.push((":dispatch_status".to_string(), b"timeout".to_vec())),
        }
        pairs.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        self.maps.insert(Map::CallResponseHeaders, pairs);
        self.call_body = body.to_vec();
    }

    pub fn dispatches(&self) -> Vec<&Call> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn sent(&self) -> Option<&Sent> {
        self.effects.iter().find_map(|e| match e {
            Effect::Send(s) => Some(s),
            _ => None,
        })
    }

    pub fn resumed(&self) -> bool {
        self.effects.contains(&Effect::Resume)
    }

    /// The effects of kinds that change the request or response.
    pub fn changes(&self, map: Map) -> Vec<&Effect> {
        self.effects
            .iter()
            .filter(
                |e| matches!(e, Effect::SetHeader(m, ..) | Effect::AddHeader(m, ..) if *m == map),
            )
            .collect()
    }

    /// A counter's value (0 when undefined or never incremented).
    pub fn counter(&self, name: &str) -> u64 {
        self.metrics
            .iter()
            .find(|(n, k, _)| n == name && *k == MetricKind::Counter)
            .map_or(0, |(_, _, v)| v.iter().sum())
    }

    /// Every value a histogram recorded.
    pub fn recorded(&self, name: &str) -> Vec<u64> {
        self.metrics
            .iter()
            .find(|(n, k, _)| n == name && *k == MetricKind::Histogram)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_default()
    }

    /// The last dispatch's token.
    pub fn last_token(&self) -> u32 {
        self.next_token
    }
}

impl Host for MockHost {
    fn header_map(&mut self, map: Map) -> HeaderMap {
        let pairs = self.maps.get(&map).map_or(&[][..], Vec::as_slice);
        let declared = match map {
            Map::RequestHeaders => self.declared_request_pairs.unwrap_or(pairs.len()),
            _ => pairs.len(),
        };
        HeaderMap::from_pairs(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            declared,
        )
    }

    fn set_header(&mut self, map: Map, name: &str, value: Option<&str>) {
        self.effects.push(Effect::SetHeader(
            map,
            name.to_string(),
            value.map(str::to_string),
        ));
        let pairs = self.maps.entry(map).or_default();
        let at = pairs.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
        pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            let pair = (name.to_string(), v.as_bytes().to_vec());
            match at {
                Some(i) => pairs.insert(i.min(pairs.len()), pair),
                None => pairs.push(pair),
            }
        }
    }

    fn add_header(&mut self, map: Map, name: &str, value: &str) {
        self.effects
            .push(Effect::AddHeader(map, name.to_string(), value.to_string()));
        self.maps
            .entry(map)
            .or_default()
            .push((name.to_string(), value.as_bytes().to_vec()));
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }

    fn set_property(&mut self, path: &[&str], value: &[u8]) -> bool {
        let key = path.join(".");
        if self.read_only.contains(&key) {
            return false;
        }
        self.effects
            .push(Effect::SetProperty(key.clone(), value.to_vec()));
        self.properties.insert(key, value.to_vec());
        true
    }

    fn body(&mut self, body: Body, size: usize) -> Option<Vec<u8>> {
        let b = match body {
            Body::Request => self.request_body.clone()?,
            Body::CallResponse => self.call_body.clone(),
        };
        Some(b.into_iter().take(size).collect())
    }

    fn cut_response_body(&mut self, start: usize, size: usize) {
        self.effects.push(Effect::CutResponseBody(start, size));
    }

    fn dispatch(&mut self, call: Dispatch<'_>) -> Result<u32, String> {
        if let Some(reason) = &self.refuse_dispatch {
            return Err(reason.clone());
        }
        self.next_token += 1;
        self.effects.push(Effect::Dispatch(Call {
            address: call.address.to_string(),
            headers: call
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: call.body.to_vec(),
            timeout: call.timeout,
        }));
        Ok(self.next_token)
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: Option<&[u8]>) {
        self.effects.push(Effect::Send(Sent {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
        }));
        let mut pairs = vec![(":status".to_string(), status.to_string().into_bytes())];
        pairs.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        self.maps.insert(Map::ResponseHeaders, pairs);
    }

    fn resume_request(&mut self) {
        self.effects.push(Effect::Resume);
    }

    fn now(&mut self) -> SystemTime {
        self.now
            .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        if let Some(i) = self.metrics.iter().position(|(n, _, _)| n == name) {
            return u32::try_from(i).map_err(|e| e.to_string());
        }
        self.metrics.push((name.to_string(), kind, Vec::new()));
        u32::try_from(self.metrics.len() - 1).map_err(|e| e.to_string())
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        self.metric_increments.push((id, by));
        if let Some((_, _, v)) = self.metrics.get_mut(id as usize) {
            v.push(u64::try_from(by).unwrap_or(0));
        }
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        if let Some((_, _, v)) = self.metrics.get_mut(id as usize) {
            v.push(value);
        }
    }
}

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LINES.with(|l| {
            l.borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }
    fn flush(&self) {}
}

/// Starts capturing this thread's log lines (and drops earlier ones).
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|l| l.borrow_mut().clear());
}

/// The log lines this thread wrote since [`capture_logs`].
pub fn logs() -> Vec<(log::Level, String)> {
    LINES.with(|l| l.borrow().clone())
}
