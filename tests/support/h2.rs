//! A raw HTTP/2 client, frame by frame: for what hyper's client would
//! hide (SETTINGS as sent, closed windows, the HPACK bytes of an answer).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frame as RFC 9113 §4.1 lays it out.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

pub const SETTINGS: u8 = 0x4;
pub const HEADERS: u8 = 0x1;
pub const DATA: u8 = 0x0;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const ACK: u8 = 0x1;

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The next frame from `read`; none at its end or a read error.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(read: &mut R) -> Option<Frame> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// A raw HTTP/2 client: frames written as given, frames read by a task.
pub struct H2 {
    pub write: Box<dyn AsyncWrite + Unpin + Send>,
    frames: tokio::sync::mpsc::UnboundedReceiver<Frame>,
}

impl H2 {
    /// Preface and SETTINGS (`settings`: id, value), then the server's
    /// SETTINGS acknowledged; returns the client and the server's SETTINGS.
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> (H2, Vec<(u16, u32)>) {
        H2::over(TcpStream::connect(addr).await.unwrap(), settings).await
    }

    /// As `connect`, on a stream opened already (TLS that agreed on h2).
    pub async fn over<S>(stream: S, settings: &[(u16, u32)]) -> (H2, Vec<(u16, u32)>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut read, write) = tokio::io::split(stream);
        let write = Box::new(write);
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(f) = read_frame(&mut read).await {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        let mut h2 = H2 { write, frames };
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, v)| [id.to_be_bytes().to_vec(), v.to_be_bytes().to_vec()].concat())
            .collect();
        out.extend(frame(SETTINGS, 0, 0, &payload));
        h2.send(&out).await;
        let first = h2.next().await.expect("the server's SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0));
        let server = first
            .payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await;
        (h2, server)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// GET `path` on `stream` (HPACK: indexed :method GET and :scheme
    /// http, literal :path and :authority).
    pub async fn get(&mut self, stream: u32, path: &str) {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend(path.as_bytes());
        block.extend([0x01, 9]);
        block.extend(b"t.example");
        self.send(&frame(HEADERS, 0x4 | 0x1, stream, &block)).await;
    }

    pub async fn ping(&mut self) {
        self.send(&frame(PING, 0, 0, b"geolb-ok")).await;
    }

    /// The next frame of `kind`, others skipped.
    pub async fn next_of(&mut self, kind: u8) -> Option<Frame> {
        loop {
            let f = self.next().await?;
            if f.kind == kind {
                return Some(f);
            }
        }
    }

    /// The next frame, or `None` once the server closed (or after 10 s).
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), self.frames.recv())
            .await
            .ok()
            .flatten()
    }
}

/// How HPACK (RFC 7541 §6) sends one field of a header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// From the static or the connection's dynamic table.
    Indexed,
    /// A literal the decoder adds to its dynamic table.
    Indexing,
    /// A literal left out of the table.
    WithoutIndexing,
    /// A literal no intermediary may ever index.
    NeverIndexed,
    /// Not a field: a new dynamic table size.
    TableSize,
}

/// The representation of each field of an HPACK `block`, in order (names
/// and values skipped over, not decoded: Huffman coding left as it is).
pub fn fields(block: &[u8]) -> Vec<Field> {
    // RFC 7541 §5.1: an integer with an N-bit prefix.
    fn int(block: &[u8], at: &mut usize, bits: u8) -> usize {
        let max = (1usize << bits) - 1;
        let mut n = (block[*at] as usize) & max;
        *at += 1;
        if n == max {
            let mut shift = 0;
            loop {
                let b = block[*at];
                *at += 1;
                n += ((b & 0x7f) as usize) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        n
    }
    // §5.2: a string (H bit, 7-bit length, octets).
    fn skip_string(block: &[u8], at: &mut usize) {
        let len = int(block, at, 7);
        *at += len;
    }
    let mut at = 0;
    let mut out = Vec::new();
    while at < block.len() {
        let first = block[at];
        let (kind, bits) = match first {
            b if b & 0x80 != 0 => (Field::Indexed, 7),
            b if b & 0xc0 == 0x40 => (Field::Indexing, 6),
            b if b & 0xe0 == 0x20 => (Field::TableSize, 5),
            b if b & 0xf0 == 0x10 => (Field::NeverIndexed, 4),
            _ => (Field::WithoutIndexing, 4),
        };
        let name = int(block, &mut at, bits);
        if !matches!(kind, Field::Indexed | Field::TableSize) {
            if name == 0 {
                skip_string(block, &mut at);
            }
            skip_string(block, &mut at);
        }
        out.push(kind);
    }
    out
}
