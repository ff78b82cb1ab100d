//! Header lists with nginx semantics, the proxy-wasm map wire format, and
//! the ways a filter changes a header ([`MapOp`]).
//!
//! nginx keeps headers in a list where a removed header stays in place with
//! its hash cleared. Who looks at that hash differs: the map a filter gets
//! (`ngx_proxy_wasm_pairs_marshal`) and nginx's variables skip such an
//! entry, but a filter's single-value lookup (`ngx_wasm_get_list_elem`)
//! and nginx's proxy module (`ngx_http_proxy_create_request`) do not, so a
//! removed request header is still found by name and still sent upstream.
//! [`HeaderList::iter`] is the hash-checking view, [`HeaderList::iter_all`]
//! and [`HeaderList::find_any`] the other one.
//!
//! Besides the list, nginx keeps "slots": pointers from `headers_in` /
//! `headers_out` (`authorization`, `server`, `date`, ...) to one entry of
//! the list. A [`HeaderList`] records those pointers too
//! ([`HeaderList::slot`]); the rules that use them are in `builtins.rs`.
//! Names and values given by a filter are percent-escaped the way the host
//! escapes them (control characters in values, separators in names), so a
//! filter cannot inject CR/LF.

/// One header line. `active == false` is a blanked entry (nginx's hash 0):
/// removed for the filter's map, still in the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    pub active: bool,
}

/// An ordered header list (request headers, response headers, a dispatch
/// response's headers).
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderList {
    entries: Vec<Header>,
    /// nginx's slot pointers into the list (`headers_out.server`, ...): the
    /// slot's name and the index of the entry it points to. Entries are
    /// never taken out of `entries`, so indexes stay valid.
    slots: Vec<(&'static str, usize)>,
}

impl HeaderList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends without escaping (headers received from the network); returns
    /// the new entry's index.
    pub fn push_raw(&mut self, name: &[u8], value: &[u8]) -> usize {
        self.entries.push(Header {
            name: name.to_vec(),
            value: value.to_vec(),
            active: true,
        });
        self.entries.len() - 1
    }

    /// The entry a slot points to (`None`: a null pointer in nginx).
    pub fn slot(&self, slot: &'static str) -> Option<usize> {
        self.slots.iter().find(|(s, _)| *s == slot).map(|(_, i)| *i)
    }

    /// Points a slot at an entry, or nulls it.
    pub fn set_slot(&mut self, slot: &'static str, entry: Option<usize>) {
        self.slots.retain(|(s, _)| *s != slot);
        if let Some(i) = entry {
            self.slots.push((slot, i));
        }
    }

    /// One entry, removed or not.
    pub fn entry(&self, index: usize) -> Option<&Header> {
        self.entries.get(index)
    }

    /// Gives an entry a name and value and makes it active again (nginx sets
    /// its hash).
    pub fn revive(&mut self, index: usize, name: &[u8], value: &[u8]) {
        if let Some(h) = self.entries.get_mut(index) {
            h.name = name.to_vec();
            h.value = value.to_vec();
            h.active = true;
        }
    }

    /// Blanks an entry (nginx clears its hash); it stays in place.
    pub fn blank(&mut self, index: usize) {
        if let Some(h) = self.entries.get_mut(index) {
            h.active = false;
        }
    }

    /// Index of the first active entry named `name` at or after `from`.
    pub fn find_from(&self, from: usize, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, h)| h.active && h.name.eq_ignore_ascii_case(name))
            .map(|(i, _)| i)
    }

    /// The active headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .filter(|h| h.active)
            .map(|h| (h.name.as_slice(), h.value.as_slice()))
    }

    /// Every entry in list order, blanked ones included: what nginx's proxy
    /// module walks when it copies the request headers.
    pub fn iter_all(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|h| (h.name.as_slice(), h.value.as_slice()))
    }

    /// The value of the first entry named `name`, blanked or not
    /// (`ngx_wasm_get_list_elem`, the host's single-value lookup, does not
    /// look at the hash).
    pub fn find_any(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    pub fn len(&self) -> usize {
        self.entries.iter().filter(|h| h.active).count()
    }

    /// First active value for `name` (case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|h| h.active && h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// Every active value for `name`, in order.
    pub fn get_all(&self, name: &[u8]) -> Vec<&[u8]> {
        self.entries
            .iter()
            .filter(|h| h.active && h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
            .collect()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// "Set" as Kong's Lua code does it (`ngx.header`): the first header named
    /// `name` takes the new name and value, the other ones are removed;
    /// appends when there is none. (A filter's "set" follows the Wasm host's
    /// own rules, in `builtins.rs`.)
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        let mut found = false;
        for h in self.entries.iter_mut() {
            if h.active && h.name.eq_ignore_ascii_case(name) {
                if found {
                    h.active = false;
                } else {
                    h.name = name.to_vec();
                    h.value = value.to_vec();
                    found = true;
                }
            }
        }
        if !found {
            self.push_raw(name, value);
        }
    }

    /// "Set" for a builtin (single-valued) nginx header: only the first match
    /// is updated; duplicates, if any, are left alone.
    pub fn set_first(&mut self, name: &[u8], value: &[u8]) {
        match self
            .entries
            .iter_mut()
            .find(|h| h.active && h.name.eq_ignore_ascii_case(name))
        {
            Some(h) => {
                h.name = name.to_vec();
                h.value = value.to_vec();
            }
            None => {
                self.push_raw(name, value);
            }
        }
    }
}

/// Characters the host percent-escapes in header names: controls, space,
/// separators and non-ASCII bytes.
fn escape_in_name(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b" \"(),/:;<=>?@[\\]{}".contains(&b)
}

/// Characters the host percent-escapes in header values: controls except tab,
/// and DEL.
fn escape_in_value(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn escape_with(input: &[u8], must_escape: fn(u8) -> bool) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        if must_escape(b) {
            out.push(b'%');
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.push(b);
        }
    }
    out
}

/// Escapes a header name given by a filter, as the host does.
pub(crate) fn escape_name(name: &[u8]) -> Vec<u8> {
    escape_with(name, escape_in_name)
}

/// Escapes a header value given by a filter, as the host does.
pub(crate) fn escape_value(value: &[u8]) -> Vec<u8> {
    escape_with(value, escape_in_value)
}

/// Serialises pairs in the proxy-wasm map format: a u32 count, then a u32 name
/// length and a u32 value length per pair, then each name and value followed by
/// a NUL byte. All integers are little-endian.
pub(crate) fn marshal(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut size = 4;
    for (n, v) in pairs {
        size += 8 + n.len() + 1 + v.len() + 1;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&len_u32(n.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses the proxy-wasm map format. An empty buffer is an empty map. `None`
/// when the buffer is malformed (the host would read past it).
pub(crate) fn unmarshal(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes = data.get(at..at.checked_add(4)?)?;
        let arr: [u8; 4] = bytes.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(arr)).ok()
    };
    let count = read_u32(0)?;
    // Each pair needs at least 10 bytes; refuse absurd counts early.
    if count > data.len() / 10 + 1 {
        return None;
    }
    let mut lens = Vec::with_capacity(count);
    let mut at = 4usize;
    for _ in 0..count {
        let n = read_u32(at)?;
        let v = read_u32(at + 4)?;
        lens.push((n, v));
        at += 8;
    }
    let mut pairs = Vec::with_capacity(count);
    for (n, v) in lens {
        let name = data.get(at..at.checked_add(n)?)?.to_vec();
        at = at.checked_add(n)?.checked_add(1)?;
        let value = data.get(at..at.checked_add(v)?)?.to_vec();
        at = at.checked_add(v)?.checked_add(1)?;
        pairs.push((name, value));
    }
    if at > data.len() {
        return None;
    }
    Some(pairs)
}

/// How a header is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapOp {
    Set,
    Add,
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_updates_first_and_clears_duplicates() {
        let mut l = HeaderList::new();
        l.push_raw(b"A", b"1");
        l.push_raw(b"b", b"2");
        l.push_raw(b"a", b"3");
        l.set(b"a", b"x");
        let pairs: Vec<_> = l.iter().collect();
        assert_eq!(pairs, vec![(&b"a"[..], &b"x"[..]), (&b"b"[..], &b"2"[..])]);
    }

    #[test]
    fn marshal_round_trip() {
        let pairs = vec![
            (b"k".to_vec(), b"v".to_vec()),
            (b"".to_vec(), b"x".to_vec()),
        ];
        assert_eq!(unmarshal(&marshal(&pairs)), Some(pairs));
        assert_eq!(unmarshal(&[1, 0, 0, 0]), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_value(b"a\r\nb\tc"), b"a%0D%0Ab\tc".to_vec());
        assert_eq!(escape_name(b"x y:"), b"x%20y%3A".to_vec());
    }
}
