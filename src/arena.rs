//! Small `Bytes` cut from shared chunks: many short values (request ids,
//! request heads) share one allocation, so that each costs neither its
//! own buffer nor, as `Bytes::from(Vec)` of a buffer not full, an
//! allocation wrapping one. A chunk is freed when the last value cut from
//! it is dropped.

use bytes::{Bytes, BytesMut};

/// What `write` appends to `arena`, split off as `Bytes`. A new chunk of
/// `chunk` bytes is taken first when less than `room` is left; what
/// `write` adds past the room grows the chunk, as `BytesMut` does.
pub fn cut(
    arena: &mut BytesMut,
    chunk: usize,
    room: usize,
    write: impl FnOnce(&mut BytesMut),
) -> Bytes {
    if arena.capacity() < room {
        *arena = BytesMut::with_capacity(chunk);
    }
    write(arena);
    arena.split().freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_a_chunk_until_its_room_runs_out() {
        let mut arena = BytesMut::new();
        let a = cut(&mut arena, 64, 16, |b| b.extend_from_slice(b"first"));
        let b = cut(&mut arena, 64, 16, |b| b.extend_from_slice(b"second"));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        assert_eq!(
            b.as_ptr(),
            a[a.len()..].as_ptr(),
            "one chunk, one after the other"
        );
        // 53 bytes used: less than 16 left, so a new chunk.
        let long = cut(&mut arena, 64, 16, |b| b.extend_from_slice(&[b'x'; 42]));
        assert_eq!(
            long.as_ptr(),
            b[b.len()..].as_ptr(),
            "still the first chunk"
        );
        let c = cut(&mut arena, 64, 16, |b| b.extend_from_slice(b"third"));
        assert_ne!(c.as_ptr(), long[long.len()..].as_ptr(), "a new chunk");
        assert_eq!(&c[..], b"third");
        // Longer than a chunk: grown, whole, the earlier values intact.
        let big = cut(&mut arena, 64, 16, |b| b.extend_from_slice(&[b'y'; 200]));
        assert_eq!(big.len(), 200);
        assert_eq!(
            (&a[..], &b[..], &c[..]),
            (&b"first"[..], &b"second"[..], &b"third"[..])
        );
    }
}
