//! How bytes become JSON text in the sideband payloads.
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

/// Appends a member whose value is JSON text already to a serialised
/// object: `{...}` becomes `{...,"name":raw}` (`{}` becomes `{"name":raw}`).
/// Kept byte for byte, with no parse: `raw` is the filter's own output or a
/// value it parsed from a reply.
pub fn append_raw_member(object: &mut Vec<u8>, name: &str, raw: &str) {
    if object.last() == Some(&b'}') {
        object.pop();
    }
    if object.len() > 1 {
        object.push(b',');
    }
    object.push(b'"');
    object.extend_from_slice(name.as_bytes());
    object.extend_from_slice(b"\":");
    object.extend_from_slice(raw.as_bytes());
    object.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_members_are_appended_as_they_are() {
        let mut o = b"{\"a\":1}".to_vec();
        append_raw_member(&mut o, "s", "{\"k\": [1, 2.50]}");
        assert_eq!(o, b"{\"a\":1,\"s\":{\"k\": [1, 2.50]}}");
        let mut e = b"{}".to_vec();
        append_raw_member(&mut e, "r", "null");
        assert_eq!(e, b"{\"r\":null}");
    }

    fn lit(b: &[u8]) -> String {
        serde_json::to_string(&*text(b)).unwrap()
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
