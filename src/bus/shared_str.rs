//! [`SharedStr`]: an immutable string that is cheap to clone and can point into a received
//! message's headers instead of copying out of them.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use super::headers::Headers;

/// An immutable UTF-8 string, cheap to clone: a `'static` literal, a shared heap string, or a
/// range of a message's header text (what a received envelope's fields are, so decoding one
/// copies none of them). Compares, hashes and orders as its text.
#[derive(Clone)]
pub struct SharedStr(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Heap(Arc<str>),
    /// `headers`' text from `start` to `end`.
    InHeaders {
        headers: Headers,
        start: u32,
        end: u32,
    },
}

impl SharedStr {
    /// A string that borrows a literal (allocates nothing, ever).
    pub const fn from_static(text: &'static str) -> Self {
        SharedStr(Repr::Static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(text) => text,
            Repr::Heap(text) => text,
            Repr::InHeaders {
                headers,
                start,
                end,
            } => &headers.text()[*start as usize..*end as usize],
        }
    }

    /// `value`, a slice of `headers`' text (as [`Headers::iter`] and [`Headers::get`] hand
    /// out), kept without a copy; any other string is copied.
    pub(crate) fn in_headers(headers: &Headers, value: &str) -> Self {
        let text = headers.text();
        let offset = (value.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        match offset.checked_add(value.len()) {
            Some(end) if end <= text.len() && text.is_char_boundary(offset) => {
                SharedStr(Repr::InHeaders {
                    headers: headers.clone(),
                    start: offset as u32,
                    end: end as u32,
                })
            }
            _ => SharedStr::from(value),
        }
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr::from_static("")
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SharedStr {
    /// Copies `text` (use [`SharedStr::from_static`] for a literal, which does not).
    fn from(text: &str) -> Self {
        SharedStr(Repr::Heap(Arc::from(text)))
    }
}

impl From<String> for SharedStr {
    fn from(text: String) -> Self {
        SharedStr(Repr::Heap(Arc::from(text)))
    }
}

impl From<&String> for SharedStr {
    fn from(text: &String) -> Self {
        SharedStr::from(text.as_str())
    }
}

impl From<Arc<str>> for SharedStr {
    fn from(text: Arc<str>) -> Self {
        SharedStr(Repr::Heap(text))
    }
}

impl From<SharedStr> for String {
    fn from(text: SharedStr) -> Self {
        text.as_str().to_owned()
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_compares_and_hashes_as_its_text() {
        let headers = Headers::from(vec![("X-Name", "order:42"), ("X-Other", "ü")]);
        let value = headers.get("X-Name").unwrap();
        let shared = SharedStr::in_headers(&headers, value);
        assert!(matches!(shared.0, Repr::InHeaders { .. }));
        let kinds = [
            shared,
            SharedStr::from_static("order:42"),
            SharedStr::from("order:42"),
            SharedStr::from(String::from("order:42")),
        ];
        let hash = |text: &SharedStr| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut hasher);
            hasher.finish()
        };
        for kind in &kinds {
            assert_eq!(kind, "order:42");
            assert_eq!(kind.as_str(), "order:42");
            assert_eq!(kind.to_string(), "order:42");
            assert_eq!(format!("{kind:?}"), "\"order:42\"");
            assert_eq!(kind, &kinds[0]);
            assert_eq!(hash(kind), hash(&kinds[0]));
        }
        // A value from elsewhere is copied, not pointed at.
        let elsewhere = String::from("order:42");
        let copied = SharedStr::in_headers(&headers, &elsewhere);
        assert!(matches!(copied.0, Repr::Heap(_)));
        assert_eq!(copied, "order:42");
        let multibyte = SharedStr::in_headers(&headers, headers.get("X-Other").unwrap());
        assert_eq!(multibyte, "ü");
        assert_eq!(SharedStr::default(), "");
    }
}
