//! The filter's payload building and reply handling, run natively on the
//! inputs a scenario gave the filter in the emulator: the `ping_auth` core
//! functions the proxy-wasm glue calls, without Wasm and without host calls.

use super::scenarios::{self, Exchange, Recorder, Scenario};
use super::stats::{summarize, Summary};
use super::Counts;
use crate::emulator::ClientRequest as EmuRequest;
use anyhow::{anyhow, bail};
use ping_auth::cache::{self, Decision, DecisionCache, KeyParts, Lookup};
use ping_auth::config;
use ping_auth::failure::Call;
use ping_auth::http::Header;
use ping_auth::protocol::decision::{self, CallResult, RequestOutcome};
use ping_auth::protocol::request::{self, ClientRequest, MAX_HEADERS};
use ping_auth::protocol::response_hook::{self, UpstreamResponse};
use std::time::{Duration, Instant, SystemTime};

/// An upstream answer as the host hands it over: header lines as received,
/// and the body.
pub type RawResponse = (Vec<(String, Vec<u8>)>, Vec<u8>);

/// Everything the filter received in one request of a scenario.
pub struct Inputs {
    pub client: EmuRequest,
    /// The `/sideband/request` reply body.
    pub request_reply: Vec<u8>,
    /// The upstream answer (response hook only).
    pub upstream: Option<RawResponse>,
    /// The `/sideband/response` reply body (response hook only).
    pub response_reply: Option<Vec<u8>>,
    /// The dispatch target, for failure messages.
    pub target: String,
}

/// What one native run produced, to compare with what the filter sent.
#[derive(Debug, Default)]
pub struct Outputs {
    pub request_payload: String,
    pub response_payload: Option<String>,
    /// The status the client gets.
    pub status: u16,
}

impl Inputs {
    /// Inputs of a scenario from what the policy server recorded.
    pub fn new(
        scenario: &Scenario,
        request: Option<Exchange>,
        response: Option<Exchange>,
        pdp_port: u16,
    ) -> Option<Self> {
        let upstream = if scenario.hook {
            let sent = scenarios::upstream_response(scenarios::upstream_body(scenario.key));
            // The loopback server appends these two.
            let mut headers = sent.headers.clone();
            headers.push((
                "Content-Length".into(),
                sent.body.len().to_string().into_bytes(),
            ));
            headers.push(("Connection".into(), b"close".to_vec()));
            Some((headers, sent.body))
        } else {
            None
        };
        Some(Self {
            client: scenario.request.clone(),
            request_reply: request?.reply_body,
            upstream,
            response_reply: match scenario.hook {
                true => Some(response?.reply_body),
                false => None,
            },
            target: format!("127.0.0.1:{pdp_port}"),
        })
    }
}

/// The core request the filter builds from the host's view of the client
/// request (Kong's forwarded scheme, host and port; normalised path).
fn client_request(c: &EmuRequest) -> ClientRequest {
    let (raw_path, raw_query) = match c.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (c.target.as_str(), ""),
    };
    let host = c
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
    ClientRequest {
        source_ip: c.client_addr.ip().to_string(),
        source_port: c.client_addr.port().to_string(),
        method: c.method.clone(),
        scheme: "http".into(),
        host,
        port: c.server_port.to_string(),
        path: request::normalize_path(raw_path.as_bytes()),
        raw_query: raw_query.as_bytes().to_vec(),
        headers: c
            .headers
            .iter()
            .take(MAX_HEADERS)
            .map(|(n, v)| Header::new(n, v.clone()))
            .collect(),
        body: Some(c.body.clone()),
        http_version: "1.1".into(),
        client_certificate: None,
    }
}

fn ok_reply(body: &[u8]) -> CallResult<'_> {
    CallResult {
        status: Some(200),
        dispatch_status: Some("ok"),
        retry_after: None,
        body,
    }
}

/// Time taken by each part of [`run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// Building the core request and the `/sideband/request` payload.
    pub payload: Duration,
    /// `check_reply` + `interpret` of the `/sideband/request` reply.
    pub decision: Duration,
    /// The response hook: `/sideband/response` payload, `check_reply` and
    /// `client_response` of its reply (zero without the hook).
    pub hook: Duration,
}

/// One request's worth of the filter's core work.
pub fn run(inputs: &Inputs) -> Result<(Outputs, Phases), String> {
    let mut phases = Phases::default();
    let started = Instant::now();
    let now = SystemTime::now();
    let req = client_request(&inputs.client);
    let sent = req.payload()?;
    let request_payload = sent.text().to_string();
    phases.payload = started.elapsed();
    let started = Instant::now();
    let members = decision::check_reply(
        Call::Request,
        &inputs.target,
        ok_reply(&inputs.request_reply),
        now,
    )
    .map_err(|f| f.log().1)?;
    let directives =
        match decision::interpret(&members, &req, None, false).map_err(|f| f.log().1)? {
            RequestOutcome::Deny(reply) => {
                phases.decision = started.elapsed();
                let out = Outputs {
                    request_payload,
                    response_payload: None,
                    status: reply.status,
                };
                return Ok((out, phases));
            }
            RequestOutcome::Allow(d) => d,
        };
    phases.decision = started.elapsed();
    let (Some((upstream_headers, upstream_body)), Some(response_reply)) =
        (&inputs.upstream, &inputs.response_reply)
    else {
        let out = Outputs {
            request_payload,
            response_payload: None,
            status: 200,
        };
        return Ok((out, phases));
    };
    let started = Instant::now();
    // The response hook: the forwarded request's headers, the upstream
    // response as received, the `/sideband/response` payload and its reply.
    let mut forwarded = req.headers.clone();
    directives.apply_headers(&mut forwarded);
    let upstream = UpstreamResponse {
        status: 200,
        headers: upstream_headers
            .iter()
            .map(|(n, v)| Header::new(n, v.clone()))
            .collect(),
        body: upstream_body.clone(),
    };
    let response_payload = response_hook::payload_for(&req, &directives, &upstream, sent.text())?;
    let members = decision::check_reply(
        Call::Response,
        &inputs.target,
        ok_reply(response_reply),
        now,
    )
    .map_err(|f| f.log().1)?;
    let reply = response_hook::client_response(&members, &upstream).map_err(|f| f.log().1)?;
    phases.hook = started.elapsed();
    let out = Outputs {
        request_payload,
        response_payload: Some(response_payload),
        status: reply.status,
    };
    Ok((out, phases))
}

/// The cached scenario's hit: the key over the request's parts and the
/// lookup, as `lookup_headers` does them (the replay applies no directive:
/// the reply allowed the request unchanged).
fn hit(
    cache: &mut DecisionCache,
    identity: &cache::KeySalt,
    spec: &config::CacheConfig,
    client: &EmuRequest,
) -> bool {
    let headers = client
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()));
    let key = cache::key(
        identity,
        spec,
        KeyParts {
            method: client.method.as_bytes(),
            target: client.target.as_bytes(),
            headers,
            client_ip: None,
            body: None,
        },
    );
    matches!(cache.lookup(&key, SystemTime::now()), Lookup::Fresh(_))
}

/// Times [`hit`] on a cache holding the decision of the recorded reply.
fn measure_hits(
    sc: &Scenario,
    inputs: &Inputs,
    pdp_port: u16,
    counts: Counts,
) -> anyhow::Result<Vec<Duration>> {
    let config = scenarios::config(sc, pdp_port).to_string();
    let config = config::parse(config.as_bytes()).map_err(|e| anyhow!("{}: {e}", sc.key))?;
    let Some(spec) = config.cache.clone() else {
        bail!("{}: the scenario's configuration has no cache", sc.key);
    };
    let req = client_request(&inputs.client);
    let now = SystemTime::now();
    let members = decision::check_reply(
        Call::Request,
        &inputs.target,
        ok_reply(&inputs.request_reply),
        now,
    )
    .map_err(|f| anyhow!("{}: {}", sc.key, f.log().1))?;
    let RequestOutcome::Allow(directives) = decision::interpret(&members, &req, None, false)
        .map_err(|f| anyhow!("{}: {}", sc.key, f.log().1))?
    else {
        bail!("{}: the recorded reply is not an allow", sc.key);
    };
    let mut cache = DecisionCache::new(spec.clone());
    let headers = inputs
        .client
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()));
    let key = cache::key(
        &config.identity,
        &spec,
        KeyParts {
            method: inputs.client.method.as_bytes(),
            target: inputs.client.target.as_bytes(),
            headers,
            client_ip: None,
            body: None,
        },
    );
    cache.store(key, Decision::Allow(directives), spec.ttl_secs, now);
    for _ in 0..counts.warmup {
        std::hint::black_box(hit(&mut cache, &config.identity, &spec, &inputs.client));
    }
    let mut total = Vec::with_capacity(counts.native);
    for _ in 0..counts.native {
        let started = Instant::now();
        let found = hit(
            &mut cache,
            &config.identity,
            &spec,
            std::hint::black_box(&inputs.client),
        );
        total.push(started.elapsed());
        if !found {
            bail!("{}: the native lookup missed", sc.key);
        }
    }
    Ok(total)
}

/// One scenario natively.
pub struct NativeRun {
    pub total: Summary,
    pub payload: Summary,
    pub decision: Summary,
    pub hook: Summary,
    /// The native payloads are byte for byte what the filter sent.
    pub same_payloads: bool,
}

/// The longest a scenario's native loop runs (after at least 200 runs).
const TIME_LIMIT: Duration = Duration::from_secs(3);

/// Replays a scenario's recorded exchange natively: `warmup` runs, then up
/// to `native` timed ones.
pub fn measure(
    sc: &Scenario,
    recorder: &Recorder,
    pdp_port: u16,
    counts: Counts,
) -> anyhow::Result<NativeRun> {
    let request = recorder.get(sc.key, "request");
    let response = recorder.get(sc.key, "response");
    let Some(inputs) = Inputs::new(sc, request.clone(), response.clone(), pdp_port) else {
        bail!("{}: the policy server recorded no exchange", sc.key);
    };
    let (first, _) = run(&inputs).map_err(|e| anyhow!("{}: native run: {e}", sc.key))?;
    if first.status != sc.expect_status {
        bail!(
            "{}: native run gave {} instead of {}",
            sc.key,
            first.status,
            sc.expect_status
        );
    }
    let same_request = request.is_some_and(|e| e.request_body == first.request_payload.as_bytes());
    let same_response = match (&first.response_payload, response) {
        (Some(p), Some(e)) => e.request_body == p.as_bytes(),
        (None, _) => !sc.hook,
        (Some(_), None) => false,
    };
    if sc.cache {
        let total = measure_hits(sc, &inputs, pdp_port, counts)?;
        return Ok(NativeRun {
            total: summarize(&total),
            payload: summarize(&[]),
            decision: summarize(&[]),
            hook: summarize(&[]),
            same_payloads: same_request,
        });
    }
    for _ in 0..counts.warmup {
        std::hint::black_box(run(std::hint::black_box(&inputs)).ok());
    }
    let mut total = Vec::with_capacity(counts.native);
    let mut phases = Vec::with_capacity(counts.native);
    let loop_started = Instant::now();
    for i in 0..counts.native {
        if i >= 200 && loop_started.elapsed() > TIME_LIMIT {
            break;
        }
        let started = Instant::now();
        let out = run(std::hint::black_box(&inputs));
        total.push(started.elapsed());
        if let Ok((_, p)) = std::hint::black_box(out) {
            phases.push(p);
        }
    }
    let phase = |f: fn(&Phases) -> Duration| summarize(&phases.iter().map(f).collect::<Vec<_>>());
    Ok(NativeRun {
        total: summarize(&total),
        payload: phase(|p| p.payload),
        decision: phase(|p| p.decision),
        hook: phase(|p| p.hook),
        same_payloads: same_request && same_response,
    })
}
