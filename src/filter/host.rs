//! [`Host`] over the proxy-wasm ABI. Reads and changes go through raw imports
//! that return the host's status: the SDK's wrappers panic (trap) on any
//! status they do not expect, and Kong's host answers `BadArgument` for the
//! body of a dispatch that timed out mid-body (seen on a real build). A
//! refusal is logged and the exchange goes on. Dispatch, local responses,
//! resuming and time use the SDK (its dispatcher must register each call).

use crate::host::{self, Body, Dispatch, HeaderMap, Host, Map, MetricKind};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::{SystemTime, UNIX_EPOCH};

/// The host of the current proxy-wasm callback.
pub struct ProxyHost;

#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::{BufferType, MapType};

    // Declared with a plain `u32` status: an enum return type would be
    // undefined behaviour for a status outside it.
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map: MapType, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_get_buffer_bytes(
            buffer: BufferType,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map: MapType,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map: MapType, key: *const u8, key_size: usize) -> u32;
        fn proxy_add_header_map_value(
            map: MapType,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_set_buffer_bytes(
            buffer: BufferType,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
        fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        fn proxy_record_metric(id: u32, value: u64) -> u32;
    }

    const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;

    fn status(code: u32) -> Result<(), u32> {
        if code == OK {
            Ok(())
        } else {
            Err(code)
        }
    }

    /// Calls a host function that returns bytes through two out-pointers and
    /// takes ownership of them: `Ok(None)` when the host returned none.
    fn take(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        match call(&mut data, &mut size) {
            OK if data.is_null() => Ok(None),
            // SAFETY: on success the host wrote a pointer to `size` bytes it
            // allocated with this module's `proxy_on_memory_allocate` (a
            // `Vec<u8>` of exactly `size` bytes), whose ownership passes to us.
            OK => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
            code => Err(code),
        }
    }

    // SAFETY (every call below): the pointers and sizes describe slices that
    // live for the call; the out-pointers are `take`'s locals.

    pub fn header_map(map: MapType) -> Result<Option<Vec<u8>>, u32> {
        take(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) })
    }

    pub fn buffer(buffer: BufferType, max: usize) -> Result<Option<Vec<u8>>, u32> {
        take(|d, s| unsafe { proxy_get_buffer_bytes(buffer, 0, max, d, s) })
    }

    pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, u32> {
        take(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
    }

    pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), u32> {
        status(unsafe {
            proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
        })
    }

    pub fn set_header(map: MapType, name: &str, value: Option<&str>) -> Result<(), u32> {
        let (k, kn) = (name.as_ptr(), name.len());
        status(unsafe {
            match value {
                Some(v) => proxy_replace_header_map_value(map, k, kn, v.as_ptr(), v.len()),
                None => proxy_remove_header_map_value(map, k, kn),
            }
        })
    }

    pub fn add_header(map: MapType, name: &str, value: &str) -> Result<(), u32> {
        status(unsafe {
            proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
        })
    }

    pub fn set_buffer(
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), u32> {
        status(unsafe { proxy_set_buffer_bytes(buffer, start, size, data.as_ptr(), data.len()) })
    }

    pub fn define_metric(kind: u32, name: &str) -> Result<u32, u32> {
        let mut id: u32 = 0;
        status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    pub fn increment_metric(id: u32, by: i64) -> Result<(), u32> {
        status(unsafe { proxy_increment_metric(id, by) })
    }

    pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
        status(unsafe { proxy_record_metric(id, value) })
    }
}

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

/// Logs a refused change; `what` names it.
fn refused(result: Result<(), u32>, level: log::Level, what: impl FnOnce() -> String) {
    if let Err(code) = result {
        log::log!(
            level,
            "the host refused {} ({})",
            what(),
            host::status_name(code)
        );
    }
}

/// Property paths are the segments joined by NUL (as the SDK sends them).
fn path_bytes(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

impl Host for ProxyHost {
    fn header_map(&mut self, map: Map) -> HeaderMap {
        match raw::header_map(map_type(map)) {
            Ok(Some(bytes)) => HeaderMap::from_bytes(bytes),
            _ => HeaderMap::default(),
        }
    }

    fn set_header(&mut self, map: Map, name: &str, value: Option<&str>) {
        let result = raw::set_header(map_type(map), name, value);
        refused(result, log::Level::Warn, || {
            format!("to set header '{name}'")
        });
    }

    fn add_header(&mut self, map: Map, name: &str, value: &str) {
        let result = raw::add_header(map_type(map), name, value);
        refused(result, log::Level::Warn, || {
            format!("another value for header '{name}'")
        });
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match raw::property(&path_bytes(path)) {
            Ok(v) => v,
            Err(raw::NOT_FOUND) => None,
            // Some hosts refuse unknown namespaces.
            Err(code) => {
                log::debug!(
                    "the host refused property '{}' ({})",
                    path.join("."),
                    host::status_name(code)
                );
                None
            }
        }
    }

    fn set_property(&mut self, path: &[&str], value: &[u8]) -> bool {
        raw::set_property(&path_bytes(path), value).is_ok()
    }

    fn body(&mut self, body: Body, size: usize) -> Option<Vec<u8>> {
        let buffer = match body {
            Body::Request => BufferType::HttpRequestBody,
            Body::CallResponse => BufferType::HttpCallResponseBody,
        };
        raw::buffer(buffer, size).ok().flatten()
    }

    fn cut_response_body(&mut self, start: usize, size: usize) {
        let result = raw::set_buffer(BufferType::HttpResponseBody, start, size, &[]);
        refused(result, log::Level::Error, || {
            "to change the response body".into()
        });
    }

    fn dispatch(&mut self, call: Dispatch<'_>) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            call.address,
            call.headers,
            Some(call.body),
            vec![],
            call.timeout,
        )
        .map_err(|s| host::status_name(s as u32))
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: Option<&[u8]>) {
        let result = hostcalls::send_http_response(u32::from(status), headers.to_vec(), body);
        if let Err(s) = result {
            log::error!(
                "the host refused the local response ({})",
                host::status_name(s as u32)
            );
        }
    }

    fn resume_request(&mut self) {
        if let Err(s) = hostcalls::resume_http_request() {
            log::error!(
                "the host refused to resume the request ({})",
                host::status_name(s as u32)
            );
        }
    }

    fn now(&mut self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        let kind = match kind {
            MetricKind::Counter => 0,
            MetricKind::Histogram => 2,
        };
        raw::define_metric(kind, name).map_err(host::status_name)
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        refused(raw::increment_metric(id, by), log::Level::Debug, || {
            format!("to increment metric {id}")
        });
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        refused(raw::record_metric(id, value), log::Level::Debug, || {
            format!("to record metric {id}")
        });
    }
}

/// The filter configuration's bytes (empty when the host has none).
pub fn configuration() -> Vec<u8> {
    raw::buffer(BufferType::PluginConfiguration, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}
