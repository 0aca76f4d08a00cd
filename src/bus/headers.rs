//! Message headers: an ordered list of name and value pairs, cheap to clone and free when empty.
//! The envelope's header names are static strings, so carrying an envelope's fields costs one
//! allocation per value and none per name, on sending and on receiving.

use std::borrow::Cow;
use std::sync::Arc;

use super::envelope::KNOWN_HEADERS;

/// A header's name: static for the names busbench knows, owned for any other.
pub type HeaderName = Cow<'static, str>;

/// A message's headers, in the order they were sent. Names may repeat; [`Headers::get`] finds
/// the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Option<Arc<[(HeaderName, String)]>>);

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers(None)
    }

    /// The value of the first header with this name (case-sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_str()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.as_deref().map_or(0, <[_]>::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the pairs, to extend.
    pub fn to_vec(&self) -> Vec<(HeaderName, String)> {
        self.0.as_deref().unwrap_or_default().to_vec()
    }

    /// The name as a [`HeaderName`]: borrowed for a name busbench knows, owned otherwise.
    pub fn name(name: &str) -> HeaderName {
        match KNOWN_HEADERS.iter().find(|known| **known == name) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(name.to_owned()),
        }
    }
}

impl From<Vec<(HeaderName, String)>> for Headers {
    fn from(pairs: Vec<(HeaderName, String)>) -> Self {
        if pairs.is_empty() {
            Headers(None)
        } else {
            Headers(Some(Arc::from(pairs)))
        }
    }
}

impl<const N: usize> From<[(HeaderName, String); N]> for Headers {
    fn from(pairs: [(HeaderName, String); N]) -> Self {
        if N == 0 {
            Headers(None)
        } else {
            Headers(Some(Arc::from(pairs)))
        }
    }
}

impl FromIterator<(HeaderName, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (HeaderName, String)>>(pairs: I) -> Self {
        Headers::from(pairs.into_iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::envelope::{HEADER_AGGREGATE_ID, HEADER_EVENT_ID};

    #[test]
    fn known_names_are_borrowed_and_lookups_find_the_first() {
        assert!(matches!(Headers::name(HEADER_EVENT_ID), Cow::Borrowed(_)));
        assert!(matches!(Headers::name("X-Custom"), Cow::Owned(_)));
        let headers: Headers = [
            (Headers::name(HEADER_AGGREGATE_ID), "a-1".to_owned()),
            (Headers::name("X-Custom"), "one".to_owned()),
            (Headers::name("X-Custom"), "two".to_owned()),
        ]
        .into();
        assert_eq!(headers.len(), 3);
        assert_eq!(headers.get(HEADER_AGGREGATE_ID), Some("a-1"));
        assert_eq!(headers.get("X-Custom"), Some("one"));
        assert_eq!(headers.get("x-custom"), None);
        let names: Vec<_> = headers.iter().map(|(name, _)| name).collect();
        assert_eq!(names, [HEADER_AGGREGATE_ID, "X-Custom", "X-Custom"]);
        assert!(Headers::new().is_empty());
        assert_eq!(Headers::from(Vec::new()), Headers::new());
    }
}
