//! Message headers: an ordered list of name and value pairs, cheap to clone and free when empty.
//!
//! Every name and value of one message lives in one text buffer, and where each ends in a short
//! list kept inline; a message's headers are one allocation, the text stored in it beside the
//! list when it is short (an envelope's is), instead of one allocation per value.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

/// Name and value bytes of a typical header, to size a buffer before copying received ones.
const TYPICAL_HEADER_BYTES: usize = 40;

/// How many headers fit without a second list (an envelope carries five to eight).
const INLINE: usize = 8;

/// Text bytes stored inside the block itself; longer text gets a heap buffer of its own. An
/// envelope's five headers take about 170 bytes, its eight about 280.
const INLINE_TEXT: usize = 320;

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
    inline: [Bounds; INLINE],
    inline_len: u8,
    /// Headers past the first [`INLINE`] ones.
    spilled: Vec<Bounds>,
    text: Text,
}

/// A block's names and values, one after another.
// The inline room is the point: it lives inside the block's one allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Text {
    /// The first `len` bytes, copied from a `String` and never changed: valid UTF-8.
    Inline { len: u16, bytes: [u8; INLINE_TEXT] },
    /// Text too long to keep inline.
    Heap(String),
}

impl Text {
    /// Room for text copied in by [`Text::fill`].
    const fn empty() -> Text {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE_TEXT],
        }
    }

    /// Takes `text` in: copied into the block's own room when it fits (the buffer is kept for
    /// the thread's next builder), kept as it is otherwise.
    fn fill(&mut self, text: String) {
        match self {
            Text::Inline { len, bytes } if text.len() <= INLINE_TEXT => {
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                *len = text.len() as u16;
                recycle(text);
            }
            _ => *self = Text::Heap(text),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // SAFETY: `fill` copied these bytes whole from a `String`, so they are valid
            // UTF-8, and nothing changes them after.
            Text::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Text::Heap(text) => text,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

thread_local! {
    /// A builder's text buffer, kept for the thread's next builder once its text was copied
    /// into a block: building headers allocates only the block.
    static SPARE_TEXT: Cell<String> = const { Cell::new(String::new()) };
}

/// An empty text buffer with room for `bytes`, the thread's spare one when there is one.
fn text_buffer(bytes: usize) -> String {
    let mut text = SPARE_TEXT.take();
    text.clear();
    text.reserve(bytes);
    text
}

/// Keeps `text`'s buffer for the thread's next builder (a large one is let go).
fn recycle(text: String) {
    if text.capacity() <= 4 * INLINE_TEXT {
        SPARE_TEXT.set(text);
    }
}

impl Block {
    fn bounds(&self) -> impl Iterator<Item = &Bounds> + Clone + '_ {
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
            text: text_buffer(text_bytes),
            inline: [Bounds::default(); INLINE],
            inline_len: 0,
            spilled: Vec::new(),
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
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
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
            Some(block) => {
                let mut text = text_buffer(block.text.as_str().len());
                text.push_str(block.text.as_str());
                HeadersBuilder {
                    text,
                    inline: block.inline,
                    inline_len: block.inline_len,
                    spilled: block.spilled.clone(),
                }
            }
            None => Headers::builder(0),
        }
    }
}

/// Builds [`Headers`] in one text buffer: see [`Headers::builder`].
#[derive(Debug)]
pub struct HeadersBuilder {
    text: String,
    inline: [Bounds; INLINE],
    inline_len: u8,
    spilled: Vec<Bounds>,
}

impl HeadersBuilder {
    /// Adds a header.
    pub fn push(&mut self, name: &str, value: &str) -> &mut Self {
        self.push_with(name, |text| text.push_str(value))
    }

    /// Adds a header whose value `write_value` appends to the text buffer (no string of its
    /// own).
    pub fn push_with(&mut self, name: &str, write_value: impl FnOnce(&mut String)) -> &mut Self {
        let text = &mut self.text;
        text.push_str(name);
        let name_end = offset(text.len());
        write_value(text);
        let bounds = Bounds {
            name_end,
            value_end: offset(text.len()),
        };
        match self.inline.get_mut(usize::from(self.inline_len)) {
            Some(slot) => {
                *slot = bounds;
                self.inline_len += 1;
            }
            None => self.spilled.push(bounds),
        }
        self
    }

    /// The headers: one allocation, none when there are no headers.
    pub fn build(self) -> Headers {
        if self.inline_len == 0 {
            recycle(self.text);
            return Headers(None);
        }
        // Made in place in its allocation, then filled: the block is a few hundred bytes,
        // not worth moving around.
        let mut block = Arc::new(Block {
            inline: self.inline,
            inline_len: self.inline_len,
            spilled: self.spilled,
            text: Text::empty(),
        });
        Arc::get_mut(&mut block)
            .expect("a block no one else holds yet")
            .text
            .fill(self.text);
        Headers(Some(block))
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
    fn long_text_is_kept_whole_and_buffers_reused_start_empty() {
        let long = "é".repeat(INLINE_TEXT);
        let mut builder = Headers::builder(8);
        builder.push("X-Long", &long).push("X-After", "1");
        let headers = builder.build();
        assert_eq!(headers.get("X-Long"), Some(long.as_str()));
        assert_eq!(headers.get("X-After"), Some("1"));
        // Text that fits inline, built right after on the same thread (the spare buffer is
        // reused), holds only its own headers.
        for value in ["first", "second"] {
            let mut builder = Headers::builder(0);
            builder.push("X-Value", value);
            let short = builder.build();
            assert_eq!(short.text(), format!("X-Value{value}"));
        }
        let empty = Headers::builder(64).build();
        assert!(empty.is_empty());
        assert_eq!(empty.text(), "");
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
