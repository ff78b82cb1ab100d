//! JSON text helpers for the sideband payloads.
//!
//! HTTP headers, paths and bodies are bytes, but JSON strings are Unicode. The
//! encoding used everywhere in this filter ("UTF-8, Latin-1 fallback"):
//!
//! * valid UTF-8 sequences are kept as they are;
//! * each byte of an invalid sequence becomes the character with that code
//!   point (U+0080..U+00FF), as ISO-8859-1 would decode it.
//!
//! So the payload is always valid JSON, no byte is dropped, and ASCII and UTF-8
//! text (nearly all real traffic) reach the policy server unchanged. The filter
//! compares the policy's reply against the same decoded text, so a header or
//! body the policy echoes untouched keeps its original bytes.

use std::borrow::Cow;

/// The text a byte string stands for under the filter's encoding.
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(chunk.invalid().iter().map(|&b| char::from(b)));
    }
    Cow::Owned(out)
}

/// Bytes that must be escaped in a JSON string: controls, `"` and `\\`.
/// (Indexes are checked at compile time.)
#[allow(clippy::indexing_slicing)]
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal, quotes included. Runs of bytes that
/// need no escape are copied in one go (multi-byte UTF-8 never does).
pub fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE.get(usize::from(b)).copied().unwrap_or(false) {
            continue;
        }
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            _ => "",
        };
        // `i` is an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(start..i).unwrap_or(""));
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(hex_digit(u32::from(b) >> 4));
            out.push(hex_digit(u32::from(b) & 0xf));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or(""));
    out.push('"');
}

/// Appends bytes as a JSON string literal under the filter's encoding.
pub fn push_bytes(out: &mut String, bytes: &[u8]) {
    push_str(out, &text(bytes));
}

fn hex_digit(n: u32) -> char {
    char::from_digit(n & 0xf, 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(b: &[u8]) -> String {
        let mut s = String::new();
        push_bytes(&mut s, b);
        s
    }

    #[test]
    fn escapes_and_control_characters() {
        assert_eq!(lit(b"a\"b\\c\nd\x01/"), r#""a\"b\\c\nd\u0001/""#);
    }

    #[test]
    fn utf8_is_kept_and_invalid_bytes_become_latin1() {
        assert_eq!(lit("é".as_bytes()), "\"é\"");
        let s = lit(b"ok\xff\xfe!");
        assert_eq!(s, "\"ok\u{ff}\u{fe}!\"");
        // Always valid JSON whatever the bytes.
        let all: Vec<u8> = (0u8..=255).collect();
        let v: serde_json::Value = serde_json::from_str(&lit(&all)).unwrap();
        assert_eq!(v.as_str().unwrap().chars().count(), 256);
    }
}
