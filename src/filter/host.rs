//! Small, panic-free wrappers over host calls.
//!
//! The SDK's `get_*_headers_bytes` helpers `unwrap()` each header name as
//! UTF-8, which would trap the instance (and every request of the worker) on
//! one odd byte; [`header_map`] reads the same map with bounds checks instead.
//! Buffers, header changes, properties, body changes and logging go through
//! `raw`, which returns the host's status instead of panicking on one the SDK
//! does not expect; local responses, dispatches (which the SDK's dispatcher
//! must register) and resuming still use the SDK.

use crate::failure::Level;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

pub use proxy_wasm::types::MapType as Map;

#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::{BufferType, MapType};

    // Declared here with a plain `u32` status: the SDK's wrappers panic (a
    // trap) on any status but the few they expect, and an enum return type
    // would be undefined behaviour for a status outside it.
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: BufferType,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: BufferType,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    }

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;

    /// `Ok(())` or the host's status code.
    fn status(code: u32) -> Result<(), u32> {
        if code == OK {
            Ok(())
        } else {
            Err(code)
        }
    }

    /// Replaces (`Some`) or removes (`None`) a header.
    pub fn set_header(map: MapType, name: &str, value: Option<&str>) -> Result<(), u32> {
        // SAFETY: the pointers and sizes describe live slices for the call.
        let code = unsafe {
            match value {
                Some(v) => proxy_replace_header_map_value(
                    map,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                ),
                None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
            }
        };
        status(code)
    }

    pub fn add_header(map: MapType, name: &str, value: &str) -> Result<(), u32> {
        // SAFETY: as above.
        status(unsafe {
            proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
        })
    }

    /// Property paths are the segments joined by NUL (as the SDK sends them).
    fn path_bytes(path: &[&str]) -> Vec<u8> {
        path.join("\0").into_bytes()
    }

    /// Calls a host function that returns bytes through two out-pointers
    /// and takes ownership of them: `Ok(None)` when the host returned none,
    /// the status code when it refused.
    fn take(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        match call(&mut data, &mut size) {
            OK if data.is_null() => Ok(None),
            // SAFETY: on success the host wrote a pointer to `size` bytes it
            // allocated with this module's `proxy_on_memory_allocate` (a
            // `Vec<u8>` allocation of exactly `size` bytes), whose ownership
            // passes to us.
            OK => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
            code => Err(code),
        }
    }

    pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, u32> {
        let path = path_bytes(path);
        // SAFETY: the path slice lives for the call; the out-pointers are
        // `take`'s locals.
        match take(|data, size| unsafe {
            proxy_get_property(path.as_ptr(), path.len(), data, size)
        }) {
            Err(NOT_FOUND) => Ok(None),
            other => other,
        }
    }

    pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), u32> {
        let path = path_bytes(path);
        // SAFETY: the pointers and sizes describe live slices for the call.
        status(unsafe {
            proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
        })
    }

    pub fn set_buffer(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> Result<(), u32> {
        // SAFETY: as above.
        status(unsafe {
            proxy_set_buffer_bytes(buffer_type, start, size, value.as_ptr(), value.len())
        })
    }

    pub fn log(level: u32, message: &str) {
        // SAFETY: as above.
        let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }

    /// The bytes of a host buffer; `None` when the host has none or refuses.
    pub fn buffer_bytes(buffer_type: BufferType, max: usize) -> Option<Vec<u8>> {
        // SAFETY: the out-pointers are `take`'s locals.
        take(|data, size| unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, data, size) })
            .ok()
            .flatten()
    }

    /// The serialized map the host returns; `None` when it refuses.
    pub fn header_map_bytes(map_type: MapType) -> Option<Vec<u8>> {
        // SAFETY: the out-pointers are `take`'s locals.
        take(|data, size| unsafe { proxy_get_header_map_pairs(map_type, data, size) })
            .ok()
            .flatten()
    }
}

/// Reads a body buffer without the SDK's getters, which panic (trap) on a
/// status they do not expect: Kong's host answers `BadArgument` for the body
/// of a dispatch that timed out while its body was being read (seen on a
/// real build under load), and a trap there is fail-open for the worker's
/// waiting requests. `None` when the host has no such buffer.
pub fn buffer(buffer_type: BufferType, max: usize) -> Option<Vec<u8>> {
    raw::buffer_bytes(buffer_type, max)
}

/// The body of a dispatch's response (empty when there is none).
pub fn call_response_body(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    buffer(BufferType::HttpCallResponseBody, size).unwrap_or_default()
}

/// A header map as `(name, value)` pairs, names as text (lossy), values raw.
/// A malformed map from the host yields the pairs read so far.
pub fn header_map(map_type: MapType) -> Vec<(String, Vec<u8>)> {
    header_map_counted(map_type).0
}

/// [`header_map`] and the number of pairs the host declared. They differ
/// when the host truncated the map: Kong's host sizes a truncated map's
/// buffer for other pairs than it writes (`ngx_proxy_wasm_pairs_size` counts
/// 100 list entries and one pseudo-header, the marshaller writes the 4
/// pseudo-headers and 96 entries), so the last pairs arrive cut.
pub fn header_map_counted(map_type: MapType) -> (Vec<(String, Vec<u8>)>, usize) {
    let Some(bytes) = raw::header_map_bytes(map_type) else {
        return (Vec::new(), 0);
    };
    (deserialize(&bytes), read_u32(&bytes, 0).unwrap_or(0))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 4)?;
    let arr: [u8; 4] = b.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(arr)).ok()
}

/// Layout: u32 count, count × (u32 name_len, u32 value_len), then each name
/// and value followed by a NUL.
fn deserialize(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(count) = read_u32(bytes, 0) else {
        return out;
    };
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    for i in 0..count {
        let sizes = 4 + i * 8;
        let (Some(klen), Some(vlen)) = (read_u32(bytes, sizes), read_u32(bytes, sizes + 4)) else {
            break;
        };
        let Some(key) = bytes.get(data..data.saturating_add(klen)) else {
            break;
        };
        data = data.saturating_add(klen).saturating_add(1);
        let Some(value) = bytes.get(data..data.saturating_add(vlen)) else {
            break;
        };
        data = data.saturating_add(vlen).saturating_add(1);
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    out
}

/// First value of a header (case-insensitive) in a map read by [`header_map`].
pub fn find<'a>(map: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// A property as bytes; `None` when the host does not have it or refuses
/// (logged at debug level: some hosts refuse unknown namespaces).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    raw::property(path).unwrap_or_else(|code| {
        log(
            Level::Debug,
            &format!(
                "the host refused property '{}' ({})",
                path.join("."),
                code_name(code)
            ),
        );
        None
    })
}

/// A property as text.
pub fn property_text(path: &[&str]) -> Option<String> {
    property(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Sets a property; false when the host refused.
pub fn set_property(path: &[&str], value: &[u8]) -> bool {
    raw::set_property(path, value).is_ok()
}

/// Sets (`Some`) or removes (`None`) a header; a refusal by the host is
/// logged, never a trap (the SDK's setters panic on any status but `Ok`).
pub fn set_header(map: MapType, name: &str, value: Option<&str>) {
    if let Err(code) = raw::set_header(map, name, value) {
        log(
            Level::Warn,
            &format!(
                "the host refused to set header '{name}' ({})",
                code_name(code)
            ),
        );
    }
}

/// Adds a header value; a refusal is logged, not a trap.
pub fn add_header(map: MapType, name: &str, value: &str) {
    if let Err(code) = raw::add_header(map, name, value) {
        log(
            Level::Warn,
            &format!(
                "the host refused another value for header '{name}' ({})",
                code_name(code)
            ),
        );
    }
}

/// Drops `size` bytes of the current response-body chunk from `start`
/// (`set_http_response_body(start, size, "")`); a refusal is logged, not a
/// trap.
pub fn set_response_body(start: usize, size: usize) {
    if let Err(code) = raw::set_buffer(BufferType::HttpResponseBody, start, size, &[]) {
        log(
            Level::Error,
            &format!(
                "the host refused to change the response body ({})",
                code_name(code)
            ),
        );
    }
}

/// Writes a log line at the given level (proxy-wasm levels: debug 1, info
/// 2, warn 3, error 4).
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    raw::log(level as u32, message);
}

/// Names a host status code for log lines.
fn code_name(code: u32) -> String {
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

/// Describes a host status for log lines.
pub fn status_name(s: Status) -> String {
    code_name(s as u32)
}
