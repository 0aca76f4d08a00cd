//! Message headers: an ordered list of name and value pairs, cheap to clone and free when empty.
//!
//! Every name and value of one message lives in one text buffer, and where each ends in a short
//! list kept inline: a message's headers cost two allocations (the shared block and its text)
//! however many there are, when sending and when receiving, instead of one per value.

use std::fmt;
use std::sync::Arc;

/// Name and value bytes of a typical header, to size a buffer before copying received ones.
const TYPICAL_HEADER_BYTES: usize = 40;

/// How many headers fit without a second list (an envelope carries five to eight).
const INLINE: usize = 8;

/// A message's headers, in the order they were sent. Names may repeat; [`Headers::get`] finds
/// the first.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Block>>);

/// Where one header's name and value end in the text; the name starts where the previous
/// value ended (or at 0), the value where the name ended.
#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    name_end: u32,
    value_end: u32,
}

#[derive(Debug, Clone)]
struct Block {
    text: String,
    inline: [Bounds; INLINE],
    inline_len: u8,
    /// Headers past the first [`INLINE`] ones.
    spilled: Vec<Bounds>,
}

impl Block {
    fn bounds(&self) -> impl Iterator<Item = &Bounds> + '_ {
        self.inline[..usize::from(self.inline_len)]
            .iter()
            .chain(&self.spilled)
    }

    fn len(&self) -> usize {
        usize::from(self.inline_len) + self.spilled.len()
    }
}

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers(None)
    }

    /// A builder whose text buffer holds `text_bytes` (names and values together) before it
    /// grows.
    pub fn builder(text_bytes: usize) -> HeadersBuilder {
        HeadersBuilder {
            block: Block {
                text: String::with_capacity(text_bytes),
                inline: [Bounds::default(); INLINE],
                inline_len: 0,
                spilled: Vec::new(),
            },
        }
    }

    /// A builder for `count` received headers, sized for typical ones (`TYPICAL_HEADER_BYTES`
    /// of name and value each, a little above an envelope's average) so that they are copied
    /// in one pass: at most a regrowth or two for longer ones, instead of a pass to measure
    /// them first.
    pub fn builder_for(count: usize) -> HeadersBuilder {
        Headers::builder(count * TYPICAL_HEADER_BYTES)
    }

    /// The value of the first header with this name (case-sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        let block = self.0.as_deref()?;
        let text = block.text.as_str();
        let mut start = 0usize;
        // A plain scan comparing lengths first: this runs several times per received envelope.
        for bounds in block.bounds() {
            let (name_end, value_end) = (bounds.name_end as usize, bounds.value_end as usize);
            if name_end - start == name.len()
                && &text.as_bytes()[start..name_end] == name.as_bytes()
            {
                return text.get(name_end..value_end);
            }
            start = value_end;
        }
        None
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let (text, bounds) = match self.0.as_deref() {
            Some(block) => (block.text.as_str(), Some(block.bounds())),
            None => ("", None),
        };
        let mut start = 0usize;
        bounds.into_iter().flatten().map(move |bounds| {
            let (name_end, value_end) = (bounds.name_end as usize, bounds.value_end as usize);
            let pair = (&text[start..name_end], &text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// All names and values, one after another (what [`Headers::get`] and [`Headers::iter`]
    /// hand out slices of).
    pub(crate) fn text(&self) -> &str {
        self.0.as_deref().map_or("", |block| block.text.as_str())
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.as_deref().map_or(0, Block::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A builder holding these headers, to add more.
    pub fn extended(&self) -> HeadersBuilder {
        match self.0.as_deref() {
            Some(block) => HeadersBuilder {
                block: block.clone(),
            },
            None => Headers::builder(0),
        }
    }
}

/// Builds [`Headers`] in one text buffer: see [`Headers::builder`].
#[derive(Debug)]
pub struct HeadersBuilder {
    block: Block,
}

impl HeadersBuilder {
    /// Adds a header.
    pub fn push(&mut self, name: &str, value: &str) -> &mut Self {
        self.push_with(name, |text| text.push_str(value))
    }

    /// Adds a header whose value `write_value` appends to the text buffer (no string of its
    /// own).
    pub fn push_with(&mut self, name: &str, write_value: impl FnOnce(&mut String)) -> &mut Self {
        let text = &mut self.block.text;
        text.push_str(name);
        let name_end = offset(text.len());
        write_value(text);
        let bounds = Bounds {
            name_end,
            value_end: offset(text.len()),
        };
        let block = &mut self.block;
        match block.inline.get_mut(usize::from(block.inline_len)) {
            Some(slot) => {
                *slot = bounds;
                block.inline_len += 1;
            }
            None => block.spilled.push(bounds),
        }
        self
    }

    /// The headers (nothing allocated beyond the text when there are none).
    pub fn build(self) -> Headers {
        if self.block.len() == 0 {
            Headers(None)
        } else {
            Headers(Some(Arc::new(self.block)))
        }
    }
}

/// A text offset; headers larger than 4 GiB are not a thing any broker carries.
fn offset(len: usize) -> u32 {
    u32::try_from(len).expect("headers larger than 4 GiB")
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Equal when the same pairs come in the same order.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut builder = Headers::builder(0);
        for (name, value) in pairs {
            builder.push(name.as_ref(), value.as_ref());
        }
        builder.build()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> From<Vec<(N, V)>> for Headers {
    fn from(pairs: Vec<(N, V)>) -> Self {
        pairs.into_iter().collect()
    }
}

impl<N: AsRef<str>, V: AsRef<str>, const K: usize> From<[(N, V); K]> for Headers {
    fn from(pairs: [(N, V); K]) -> Self {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::envelope::HEADER_AGGREGATE_ID;

    #[test]
    fn lookups_find_the_first_and_order_is_kept() {
        let headers: Headers = [
            (HEADER_AGGREGATE_ID, "a-1"),
            ("X-Custom", "one"),
            ("X-Custom", "two"),
            ("X-Empty", ""),
        ]
        .into();
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.get(HEADER_AGGREGATE_ID), Some("a-1"));
        assert_eq!(headers.get("X-Custom"), Some("one"));
        assert_eq!(headers.get("X-Empty"), Some(""));
        assert_eq!(headers.get("x-custom"), None);
        let pairs: Vec<_> = headers.iter().collect();
        assert_eq!(
            pairs,
            [
                (HEADER_AGGREGATE_ID, "a-1"),
                ("X-Custom", "one"),
                ("X-Custom", "two"),
                ("X-Empty", "")
            ]
        );
        assert!(Headers::new().is_empty());
        assert_eq!(Headers::from(Vec::<(&str, &str)>::new()), Headers::new());
        assert_eq!(
            format!("{:?}", Headers::from([("a", "b")])),
            r#"[("a", "b")]"#
        );
    }

    #[test]
    fn more_headers_than_fit_inline_spill_in_order() {
        let pairs: Vec<(String, String)> = (0..INLINE * 2 + 3)
            .map(|i| (format!("name-{i}"), "v".repeat(i)))
            .collect();
        let headers: Headers = pairs.iter().map(|(n, v)| (n, v)).collect();
        assert_eq!(headers.len(), pairs.len());
        let back: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(back, pairs);
        assert_eq!(headers.get("name-18"), Some("v".repeat(18).as_str()));
    }

    #[test]
    fn extending_keeps_the_original_and_adds_after_it() {
        let original: Headers = [("X-One", "1")].into();
        let mut builder = original.extended();
        builder.push("X-Two", "2").push_with("X-Three", |text| {
            text.push('3');
        });
        let extended = builder.build();
        assert_eq!(original.len(), 1);
        assert_eq!(
            extended.iter().collect::<Vec<_>>(),
            [("X-One", "1"), ("X-Two", "2"), ("X-Three", "3")]
        );
        assert_eq!(Headers::new().extended().build(), Headers::new());
        // Equality is by pairs, whatever the buffers' capacities.
        let mut roomy = Headers::builder(1024);
        roomy.push("X-One", "1");
        assert_eq!(roomy.build(), original);
    }
}
