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

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{08}' => Some("\\b"),
            '\u{0c}' => Some("\\f"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.push_str(s.get(start..i).unwrap_or(""));
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                let b = c as u32;
                out.push(hex_digit(b >> 4));
                out.push(hex_digit(b & 0xf));
            }
        }
        start = i + c.len_utf8();
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
