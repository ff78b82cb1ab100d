//! A tiny proxy-wasm filter used only by the host emulator's own tests.
//!
//! It does nothing by itself: every callback looks for a request header named
//! `x-probe-<step>` (read once, in `on_http_request_headers`) and runs the
//! commands it contains, separated by `;`. Every callback also logs one line
//! `step <name> ...` so tests can assert the order in which the host calls it.
//!
//! Steps: `req-headers`, `req-body`, `call-response` (or `call-response-<n>`
//! for the n-th response, counted from 1), `resp-headers`, `resp-body`
//! (or `resp-body-<n>` for the n-th call), `log`.
//!
//! Commands (arguments after `:`, separated by `|`):
//! - `log:<text>`: log `<text>` at info level.
//! - `pause` / `continue`: the action returned by the step (default continue).
//! - `trap`: panic (a Wasm trap).
//! - `dispatch:<upstream>|<path>|<timeout ms>|<scheme>|<authority>|<method>|<body>`:
//!   `dispatch_http_call`; logs `dispatch ok token=<n>` or `dispatch err <status>`.
//! - `local:<status>|<body>|<name>=<value>,<name>=<value>`: `send_http_response`.
//! - `resume`: `resume_http_request`; `resume-response`: `resume_http_response`.
//! - `get-property:<a.b.c>`: logs `property <a.b.c> = <value>` or `= <none>`
//!   (`= <err N>` for an error status).
//! - `set-property:<a.b.c>=<value>`: logs `set-property ok` or `set-property err N`.
//! - `dump-req-headers`, `dump-resp-headers`, `dump-call`: log the header map
//!   (one line, `name: value` pairs joined by ` | `) and the call response body.
//! - `call-body-status`: `proxy_get_buffer_bytes(HttpCallResponseBody)` called
//!   directly (the SDK getter panics on an unexpected status); logs
//!   `call-body-status <status> len=<n>`. `dump-call-headers`: logs only the
//!   call response header map (`call-headers ...`).
//! - `add-resp-header:<n>=<v>`, `set-resp-header:<n>=<v>`, `remove-resp-header:<n>`,
//!   `set-req-header:<n>=<v>`, `add-req-header:<n>=<v>`, `remove-req-header:<n>`.
//!   They log `resp-header <add|set|remove> <n> -> <result>` (or
//!   `req-header ...`): the status the host returned; they never panic.
//! - `get-req-header:<n>`, `get-resp-header:<n>`: `get_http_request_header` /
//!   `get_http_response_header`, log `req-header get <n> = <value>` /
//!   `resp-header get <n> = <value>` (`<none>` when not found).
//! - `set-resp-headers:<n>=<v>,<n>=<v>`, `set-req-headers:<n>=<v>,...`:
//!   `set_http_response_headers` / `set_http_request_headers` (the whole
//!   map), log `resp-headers set -> <result>` / `req-headers set -> <result>`.
//! - `read-body[:<start>|<max>]`: logs `req-body len=<n> data=<text>` or `req-body none`.
//! - `read-resp-body`: logs `resp-body-data <text>`.
//! - `set-req-body:<start>|<size>|<value>`, `set-resp-body:<start>|<size>|<value>`.
//! - `metric-define:<kind>|<name>`: `proxy_define_metric` (kind `counter`,
//!   `gauge`, `histogram` or a raw number); logs
//!   `metric define <name> -> <status> id=<id>` and remembers the id.
//! - `metric-inc:<name>|<n>[,<n>...]`, `metric-record:<name>|<n>[,<n>...]`
//!   (signed 64-bit numbers): one `proxy_increment_metric` /
//!   `proxy_record_metric` per number; `metric-get:<name>`:
//!   `proxy_get_metric`. `<name>` is a name defined before in this
//!   instance, or `#<id>`. They log `metric inc|record <name> -> <status>`
//!   and `metric get <name> -> <status> value=<v>`.
//! - `raw:<name>`: calls a raw host function (`done`, `reset`, `shared-set`,
//!   `shared-get`, `metric`, `foreign`, `time`) and logs the result.
//!   (`get_log_level` is left out on purpose: Kong declares
//!   `proxy_get_log_level` with two parameters, so a module importing the
//!   SDK's one-parameter version does not load at all.)
//!
//! Root context: `on_configure` logs `configure <config>`; the configuration
//! `fail` makes it return false, `trap` makes it panic, `tick:<ms>` sets a
//! tick period (each tick logs `tick`), `prop:<a.b>` reads a property from
//! the root context.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};
use std::collections::HashMap;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { context_id })
    });
}}

fn log(message: &str) {
    let _ = hostcalls::log(LogLevel::Info, message);
}

struct ProbeRoot {
    context_id: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log(&format!("vm_start root={}", self.context_id));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        log(&format!(
            "configure root={} config={}",
            self.context_id, config
        ));
        if config == "fail" {
            return false;
        }
        if config == "trap" {
            panic!("trap in on_configure");
        }
        if let Some(path) = config.strip_prefix("prop:") {
            let segments: Vec<&str> = path.split('.').collect();
            match hostcalls::get_property(segments) {
                Ok(Some(v)) => log(&format!(
                    "property {path} = {}",
                    String::from_utf8_lossy(&v)
                )),
                Ok(None) => log(&format!("property {path} = <none>")),
                Err(status) => log(&format!("property {path} = <err {}>", status as u32)),
            }
        }
        if let Some(ms) = config.strip_prefix("tick:") {
            let ms: u64 = ms.parse().unwrap_or(100);
            self.set_tick_period(Duration::from_millis(ms));
        }
        true
    }

    fn on_tick(&mut self) {
        log(&format!("tick root={}", self.context_id));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        log(&format!("create_http_context id={context_id}"));
        Some(Box::new(Probe {
            context_id,
            commands: HashMap::new(),
            call_responses: 0,
            resp_body_calls: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    context_id: u32,
    commands: HashMap<String, String>,
    call_responses: u32,
    resp_body_calls: u32,
}

impl Probe {
    /// Runs the commands of `step` (or of `step-<n>` when present) and returns the action.
    fn run(&mut self, step: &str, nth: Option<u32>) -> Action {
        let numbered = nth.map(|n| format!("{step}-{n}"));
        let script = numbered
            .and_then(|key| self.commands.get(&key).cloned())
            .or_else(|| self.commands.get(step).cloned())
            .unwrap_or_default();
        let mut action = Action::Continue;
        for command in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (name, arg) = match command.split_once(':') {
                Some((name, arg)) => (name, arg),
                None => (command, ""),
            };
            match name {
                "pause" => action = Action::Pause,
                "continue" => action = Action::Continue,
                _ => self.command(name, arg),
            }
        }
        action
    }

    fn command(&mut self, name: &str, arg: &str) {
        match name {
            "log" => log(arg),
            "trap" => panic!("probe trap"),
            "dispatch" => self.dispatch(arg),
            "local" => {
                let parts: Vec<&str> = arg.splitn(3, '|').collect();
                let status: u32 = parts.first().and_then(|s| s.parse().ok()).unwrap_or(200);
                let body = parts.get(1).copied().unwrap_or("");
                let headers: Vec<(&str, &str)> = parts
                    .get(2)
                    .map(|h| h.split(',').filter_map(|kv| kv.split_once('=')).collect())
                    .unwrap_or_default();
                let body = if body.is_empty() {
                    None
                } else {
                    Some(body.as_bytes())
                };
                let result = hostcalls::send_http_response(status, headers, body);
                log(&format!("local result={result:?}"));
            }
            "resume" => self.resume_http_request(),
            "resume-response" => {
                let result = hostcalls::resume_http_response();
                log(&format!("resume-response result={result:?}"));
            }
            "get-property" => {
                let path: Vec<&str> = arg.split('.').collect();
                match hostcalls::get_property(path) {
                    Ok(Some(value)) => log(&format!(
                        "property {arg} = {}",
                        String::from_utf8_lossy(&value)
                    )),
                    Ok(None) => log(&format!("property {arg} = <none>")),
                    Err(status) => log(&format!("property {arg} = <err {}>", status as u32)),
                }
            }
            "set-property" => {
                let (path, value) = arg.split_once('=').unwrap_or((arg, ""));
                let path: Vec<&str> = path.split('.').collect();
                match hostcalls::set_property(path, Some(value.as_bytes())) {
                    Ok(()) => log("set-property ok"),
                    Err(status) => log(&format!("set-property err {}", status as u32)),
                }
            }
            "dump-req-headers" => log(&format!(
                "req-headers {}",
                dump(MapType::HttpRequestHeaders)
            )),
            "dump-resp-headers" => log(&format!(
                "resp-headers {}",
                dump(MapType::HttpResponseHeaders)
            )),
            "dump-call" => {
                log(&format!(
                    "call-headers {}",
                    dump(MapType::HttpCallResponseHeaders)
                ));
                let body = self
                    .get_http_call_response_body(0, usize::MAX)
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                log(&format!("call-body {body:?}"));
            }
            "dump-call-headers" => log(&format!(
                "call-headers {}",
                dump(MapType::HttpCallResponseHeaders)
            )),
            "call-body-status" => {
                let (status, len) = call_body_status();
                log(&format!("call-body-status {status} len={len}"));
            }
            "add-resp-header" => {
                let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
                let result = hostcalls::add_map_value(MapType::HttpResponseHeaders, n, v);
                log(&format!("resp-header add {n} -> {result:?}"));
            }
            "set-resp-header" => {
                let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
                let result = hostcalls::set_map_value(MapType::HttpResponseHeaders, n, Some(v));
                log(&format!("resp-header set {n} -> {result:?}"));
            }
            "remove-resp-header" => {
                let result = hostcalls::set_map_value(MapType::HttpResponseHeaders, arg, None);
                log(&format!("resp-header remove {arg} -> {result:?}"));
            }
            "set-resp-headers" => {
                let pairs: Vec<(&str, &str)> =
                    arg.split(',').filter_map(|kv| kv.split_once('=')).collect();
                let result = hostcalls::set_map(MapType::HttpResponseHeaders, pairs);
                log(&format!("resp-headers set -> {result:?}"));
            }
            "add-req-header" => {
                let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
                let result = hostcalls::add_map_value(MapType::HttpRequestHeaders, n, v);
                log(&format!("req-header add {n} -> {result:?}"));
            }
            "set-req-header" => {
                let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
                let result = hostcalls::set_map_value(MapType::HttpRequestHeaders, n, Some(v));
                log(&format!("req-header set {n} -> {result:?}"));
            }
            "remove-req-header" => {
                let result = hostcalls::set_map_value(MapType::HttpRequestHeaders, arg, None);
                log(&format!("req-header remove {arg} -> {result:?}"));
            }
            "get-req-header" => {
                let value = match hostcalls::get_map_value(MapType::HttpRequestHeaders, arg) {
                    Ok(Some(v)) => v,
                    Ok(None) => "<none>".to_string(),
                    Err(status) => format!("<err {}>", status as u32),
                };
                log(&format!("req-header get {arg} = {value}"));
            }
            "get-resp-header" => {
                let value = match hostcalls::get_map_value(MapType::HttpResponseHeaders, arg) {
                    Ok(Some(v)) => v,
                    Ok(None) => "<none>".to_string(),
                    Err(status) => format!("<err {}>", status as u32),
                };
                log(&format!("resp-header get {arg} = {value}"));
            }
            "set-req-headers" => {
                let pairs: Vec<(&str, &str)> =
                    arg.split(',').filter_map(|kv| kv.split_once('=')).collect();
                let result = hostcalls::set_map(MapType::HttpRequestHeaders, pairs);
                log(&format!("req-headers set -> {result:?}"));
            }
            "read-body" => {
                let mut it = arg.splitn(2, '|');
                let start = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let max = it.next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
                match self.get_http_request_body(start, max) {
                    Some(body) => log(&format!(
                        "req-body len={} data={}",
                        body.len(),
                        String::from_utf8_lossy(&body)
                    )),
                    None => log("req-body none"),
                }
            }
            "read-resp-body" => {
                let body = self
                    .get_http_response_body(0, usize::MAX)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|| "<none>".to_string());
                log(&format!("resp-body-data {body}"));
            }
            "set-req-body" | "set-resp-body" => {
                let parts: Vec<&str> = arg.splitn(3, '|').collect();
                let start = parts.first().and_then(|s| s.parse().ok()).unwrap_or(0);
                let size = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let value = parts.get(2).copied().unwrap_or("");
                if name == "set-req-body" {
                    self.set_http_request_body(start, size, value.as_bytes());
                } else {
                    self.set_http_response_body(start, size, value.as_bytes());
                }
            }
            "raw" => raw(arg),
            "metric-define" => metric_define(arg),
            "metric-inc" => metric_update(arg, false),
            "metric-record" => metric_update(arg, true),
            "metric-get" => metric_get(arg),
            other => log(&format!("unknown command {other}")),
        }
    }

    fn dispatch(&mut self, arg: &str) {
        let parts: Vec<&str> = arg.split('|').collect();
        let field = |i: usize| parts.get(i).copied().unwrap_or("");
        let upstream = field(0);
        let path = field(1);
        let timeout: u64 = field(2).parse().unwrap_or(1000);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let method = if field(5).is_empty() {
            "POST"
        } else {
            field(5)
        };
        if method != "-" {
            headers.push((":method", method));
        }
        if path != "-" {
            headers.push((":path", path));
        }
        if !field(3).is_empty() {
            headers.push((":scheme", field(3)));
        }
        if !field(4).is_empty() {
            headers.push((":authority", field(4)));
        }
        headers.push(("x-probe-sent", "1"));
        headers.push(("Host", "ignored.example"));
        let body = field(6);
        let body = if body.is_empty() {
            None
        } else {
            Some(body.as_bytes())
        };
        match self.dispatch_http_call(
            upstream,
            headers,
            body,
            vec![],
            Duration::from_millis(timeout),
        ) {
            Ok(token) => log(&format!("dispatch ok token={token}")),
            Err(status) => log(&format!("dispatch err {}", status as u32)),
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    #[link_name = "proxy_get_buffer_bytes"]
    fn raw_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    #[link_name = "proxy_define_metric"]
    fn raw_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    #[link_name = "proxy_increment_metric"]
    fn raw_increment_metric(metric_id: u32, offset: i64) -> u32;
    #[link_name = "proxy_record_metric"]
    fn raw_record_metric(metric_id: u32, value: u64) -> u32;
    #[link_name = "proxy_get_metric"]
    fn raw_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
}

thread_local! {
    /// Metric ids by name, as `metric-define` got them.
    static METRIC_IDS: std::cell::RefCell<HashMap<String, u32>> =
        std::cell::RefCell::new(HashMap::new());
}

fn metric_id(name: &str) -> u32 {
    if let Some(raw) = name.strip_prefix('#') {
        return raw.parse().unwrap_or(0);
    }
    METRIC_IDS.with(|ids| ids.borrow().get(name).copied().unwrap_or(0))
}

fn metric_define(arg: &str) {
    let (kind, name) = arg.split_once('|').unwrap_or(("counter", arg));
    let kind: u32 = match kind {
        "counter" => 0,
        "gauge" => 1,
        "histogram" => 2,
        other => other
            .parse::<i64>()
            .map(|n| u32::from_ne_bytes((n as i32).to_ne_bytes()))
            .unwrap_or(u32::MAX),
    };
    let mut id: u32 = 0;
    // SAFETY: the name is a live slice and `id` a valid local.
    let status = unsafe { raw_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    if status == 0 {
        METRIC_IDS.with(|ids| ids.borrow_mut().insert(name.to_string(), id));
    }
    log(&format!("metric define {name} -> {status} id={id}"));
}

fn metric_update(arg: &str, record: bool) {
    let (name, values) = arg.split_once('|').unwrap_or((arg, "1"));
    let id = metric_id(name);
    for n in values
        .split(',')
        .filter_map(|v| v.trim().parse::<i64>().ok())
    {
        // SAFETY: plain values.
        let status = unsafe {
            if record {
                raw_record_metric(id, n as u64)
            } else {
                raw_increment_metric(id, n)
            }
        };
        let verb = if record { "record" } else { "inc" };
        log(&format!("metric {verb} {name} -> {status}"));
    }
}

fn metric_get(name: &str) {
    let mut value: u64 = 0;
    // SAFETY: `value` is a valid local.
    let status = unsafe { raw_get_metric(metric_id(name), &mut value) };
    log(&format!("metric get {name} -> {status} value={value}"));
}

/// The raw status of reading the whole call response body, and its length.
fn call_body_status() -> (u32, usize) {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: both out-pointers are valid locals; on success the host hands
    // over a buffer allocated with the module's allocator, freed below.
    let status = unsafe { raw_get_buffer_bytes(4, 0, usize::MAX, &mut data, &mut size) };
    if status == 0 && !data.is_null() {
        // SAFETY: the host allocated `size` bytes at `data` with `proxy_on_memory_allocate`.
        drop(unsafe { Vec::from_raw_parts(data, size, size) });
    }
    (status, size)
}

fn dump(map: MapType) -> String {
    match hostcalls::get_map_bytes(map) {
        Ok(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .join(" | "),
        Err(status) => format!("<err {}>", status as u32),
    }
}

fn raw(name: &str) {
    match name {
        "done" => log(&format!("raw done {:?}", hostcalls::done())),
        "reset" => log(&format!("raw reset {:?}", hostcalls::reset_http_request())),
        "shared-set" => log(&format!(
            "raw shared-set {:?}",
            hostcalls::set_shared_data("probe-key", Some(b"v"), None)
        )),
        "shared-get" => log(&format!(
            "raw shared-get {:?}",
            hostcalls::get_shared_data("probe-key").map(|(v, cas)| (v.map(|b| b.len()), cas))
        )),
        "metric" => {
            let id = hostcalls::define_metric(MetricType::Counter, "probe_requests");
            log(&format!("raw metric define {id:?}"));
            if let Ok(id) = id {
                log(&format!(
                    "raw metric inc {:?}",
                    hostcalls::increment_metric(id, 1)
                ));
                log(&format!("raw metric get {:?}", hostcalls::get_metric(id)));
            }
        }
        "foreign" => log(&format!(
            "raw foreign {:?}",
            hostcalls::call_foreign_function("nope", Some(b"x")).map(|v| v.map(|b| b.len()))
        )),
        "time" => {
            let now = hostcalls::get_current_time();
            log(&format!("raw time ok={}", now.is_ok()));
        }
        other => log(&format!("raw unknown {other}")),
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _t: usize) {
        self.call_responses += 1;
        let status = self.get_http_call_response_header(":status");
        let dispatch_status = self.get_http_call_response_header(":dispatch_status");
        log(&format!(
            "step call-response id={} token={token} headers={headers} body={body} status={status:?} dispatch_status={dispatch_status:?}",
            self.context_id
        ));
        let n = self.call_responses;
        let _ = self.run("call-response", Some(n));
    }

    fn on_done(&mut self) -> bool {
        log(&format!("step done id={}", self.context_id));
        true
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, num_headers: usize, eof: bool) -> Action {
        if let Ok(pairs) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            for (name, value) in pairs {
                if let Some(step) = name.to_ascii_lowercase().strip_prefix("x-probe-") {
                    self.commands.insert(
                        step.to_string(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
        }
        log(&format!(
            "step req-headers id={} headers={num_headers} eof={eof}",
            self.context_id
        ));
        let action = self.run("req-headers", None);
        log(&format!("step req-headers end id={}", self.context_id));
        action
    }

    fn on_http_request_body(&mut self, size: usize, eof: bool) -> Action {
        log(&format!(
            "step req-body id={} size={size} eof={eof}",
            self.context_id
        ));
        self.run("req-body", None)
    }

    fn on_http_response_headers(&mut self, num_headers: usize, eof: bool) -> Action {
        log(&format!(
            "step resp-headers id={} headers={num_headers} eof={eof}",
            self.context_id
        ));
        let action = self.run("resp-headers", None);
        log(&format!("step resp-headers end id={}", self.context_id));
        action
    }

    fn on_http_response_body(&mut self, size: usize, eof: bool) -> Action {
        self.resp_body_calls += 1;
        log(&format!(
            "step resp-body id={} n={} size={size} eof={eof}",
            self.context_id, self.resp_body_calls
        ));
        let n = self.resp_body_calls;
        let action = self.run("resp-body", Some(n));
        log(&format!("step resp-body end id={}", self.context_id));
        action
    }

    fn on_log(&mut self) {
        log(&format!("step log id={}", self.context_id));
        let _ = self.run("log", None);
        log(&format!("step log end id={}", self.context_id));
    }
}

/// Keeps `Status` in scope for readers of the command list above.
#[allow(dead_code)]
fn status_name(status: Status) -> u32 {
    status as u32
}
