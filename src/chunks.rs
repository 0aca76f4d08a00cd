//! Many small byte buffers cut from shared chunks: one allocation per chunk instead of one per
//! buffer, and buffers that clone without allocating (a `Bytes` made from a `Vec` of its own
//! allocates again on its first clone). A chunk is freed when the last buffer cut from it is
//! dropped, so short-lived buffers (a message's payload on its way through the bus) keep only
//! a few chunks alive.

use bytes::{BufMut, Bytes, BytesMut};

/// Cuts buffers from chunks of [`ByteChunks::CHUNK_BYTES`]. One per task: it is not shared.
pub struct ByteChunks {
    chunk: BytesMut,
}

impl Default for ByteChunks {
    fn default() -> Self {
        ByteChunks::new()
    }
}

impl ByteChunks {
    /// Bytes of room in each new chunk; a buffer larger than this gets a chunk of its own.
    pub const CHUNK_BYTES: usize = 64 * 1024;

    /// No chunk yet: the first buffer allocates one.
    pub fn new() -> Self {
        ByteChunks {
            chunk: BytesMut::new(),
        }
    }

    /// A copy of `bytes`.
    pub fn copy(&mut self, bytes: &[u8]) -> Bytes {
        self.write(bytes.len(), |buffer| buffer.put_slice(bytes))
    }

    /// A buffer of `len` bytes that `fill` writes (with `BufMut`'s methods); what it writes
    /// past `len` is kept too, at the cost of a reallocation.
    pub fn write(&mut self, len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
        if self.chunk.capacity() - self.chunk.len() < len {
            self.chunk = BytesMut::with_capacity(Self::CHUNK_BYTES.max(len));
        }
        fill(&mut self.chunk);
        self.chunk.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::ByteChunks;
    use bytes::BufMut;

    #[test]
    fn buffers_share_chunks_and_keep_their_bytes() {
        let mut chunks = ByteChunks::new();
        let first = chunks.copy(b"first");
        let empty = chunks.copy(b"");
        let second = chunks.write(6, |buffer| buffer.put_slice(b"second"));
        // Larger than the room left: a new chunk; larger than a chunk: one of its own.
        let filler = vec![7u8; ByteChunks::CHUNK_BYTES - 20];
        let third = chunks.copy(&filler);
        let huge = vec![9u8; ByteChunks::CHUNK_BYTES * 2];
        let fourth = chunks.copy(&huge);
        let after = chunks.copy(b"after");
        assert_eq!(&first[..], b"first");
        assert!(empty.is_empty());
        assert_eq!(&second[..], b"second");
        assert_eq!(third[..], filler[..]);
        assert_eq!(fourth[..], huge[..]);
        assert_eq!(&after[..], b"after");
        // Consecutive buffers sit side by side in one chunk.
        assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(first.len()));
        let clone = second.clone();
        drop((first, second, third, fourth));
        assert_eq!(&clone[..], b"second");
    }
}
