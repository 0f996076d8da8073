//! `compress`: responses compressed on their way to the client, streamed.
//!
//! [`negotiate`] reads the client's `Accept-Encoding` when the request
//! comes; [`start`] decides on the response head (what may not be
//! compressed, Vary, Content-Encoding, ETag) and hands back the
//! [`Compressing`] stream that `body::ResponseBody` polls in place of the
//! backend's body. Nothing is buffered beyond the encoder's window: each
//! backend frame is encoded as it comes, and when the backend pauses the
//! encoder is flushed, so a stream of events keeps flowing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_compression::Level;
use async_compression::brotli::EncoderParams;
use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::{Body, Frame};
use tokio::io::AsyncWrite;

use crate::config::{CompressConfig, CompressLevels, Encoding};
use crate::upstream::BackendBody;

/// The error of a response body (the same type as `body::BoxError`).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The coding the client prefers among `config.algorithms`, if any: the
/// highest q-value above 0, `*` standing for those not named, a tie going
/// to the first in `config.algorithms`. None for HEAD (no body) and
/// HTTP/1.0 (without chunked framing the connection would have to close
/// to end the body; nginx's `gzip_http_version 1.1` skips it too).
pub(super) fn negotiate(
    config: &CompressConfig,
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Option<Encoding> {
    if method == Method::HEAD || version < Version::HTTP_11 {
        return None;
    }
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let q = parts
                .find_map(|p| {
                    let p = p.trim_ascii();
                    let v = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))?;
                    Some(qvalue(v.trim_ascii()))
                })
                .unwrap_or(1000);
            let slot = if name == b"*" {
                &mut star
            } else if let Some(e) = coding(name) {
                &mut named[e as usize]
            } else {
                continue;
            };
            // The first mention counts; a repeat cannot undo a refusal.
            slot.get_or_insert(q);
        }
    }
    let mut best: Option<(Encoding, u16)> = None;
    for &e in &config.algorithms {
        let q = named[e as usize].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

fn coding(name: &[u8]) -> Option<Encoding> {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    if is("gzip") || is("x-gzip") {
        Some(Encoding::Gzip)
    } else if is("br") {
        Some(Encoding::Br)
    } else if is("zstd") {
        Some(Encoding::Zstd)
    } else {
        None
    }
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths; a malformed one as 0, so
/// that a coding the client may not want is not used.
fn qvalue(v: &[u8]) -> u16 {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => thousandths,
        b"1" if thousandths == 0 => 1000,
        _ => 0,
    }
}

/// Decides on a response head: if its kind is one `config` compresses, it
/// gets `Vary: Accept-Encoding` (whatever this client accepts, for caches),
/// and if the client accepts `encoding`, its headers say so and the
/// returned stream compresses `body`. Otherwise `body` is given back.
// The body given back (the common case) is moved, not boxed: boxing
// it would cost every uncompressed response an allocation.
#[allow(clippy::result_large_err)]
pub(super) fn start(
    config: &CompressConfig,
    encoding: Option<Encoding>,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: BackendBody,
) -> Result<Box<Compressing>, BackendBody> {
    if !compressible(config, status, headers, &body) {
        return Err(body);
    }
    add_vary(headers);
    // A HEAD answer has no body, but the headers a GET would get.
    let Some(encoding) = encoding.filter(|_| !body.is_end_stream()) else {
        return Err(body);
    };
    headers.remove(header::CONTENT_LENGTH);
    // A range of the compressed bytes is not what a client asking for a
    // range of the resource wants.
    headers.remove(header::ACCEPT_RANGES);
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    );
    // Another encoding of the same representation is not byte-identical:
    // a strong validator no longer holds (RFC 9110 §8.8.1), as nginx does.
    if let Some(etag) = headers.get(header::ETAG)
        && etag.as_bytes().starts_with(b"\"")
    {
        let mut weak = Vec::with_capacity(etag.len() + 2);
        weak.extend_from_slice(b"W/");
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, v);
        }
    }
    Ok(Box::new(Compressing {
        body,
        encoder: Encoder::new(encoding, config.levels),
        state: State::Reading,
        read: 0,
    }))
}

/// Whether a response is of a kind `config` compresses, whichever client
/// asked.
fn compressible(
    config: &CompressConfig,
    status: StatusCode,
    headers: &HeaderMap,
    body: &BackendBody,
) -> bool {
    // 206 and Content-Range: a part, whose byte offsets refer to the
    // identity representation. 204/304/1xx: no body.
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        )
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"));
    if no_transform {
        return false;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    if length.is_some_and(|n| n < config.min_size) {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| type_matches(&config.types, v.as_bytes()))
}

/// Whether the media type of a Content-Type value (parameters ignored)
/// is one of `types` ("type/subtype" or "type/*", lower-case).
fn type_matches(types: &[String], content_type: &[u8]) -> bool {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    let media = content_type[..end].trim_ascii();
    types.iter().any(|t| match t.strip_suffix('*') {
        Some(prefix) => {
            media.len() > prefix.len()
                && media[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        None => media.eq_ignore_ascii_case(t.as_bytes()),
    })
}

/// Appends `Vary: Accept-Encoding` unless the response varies on it (or
/// on everything) already; the backend's own Vary values stay.
fn add_vary(headers: &mut HeaderMap) {
    let covered = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|name| name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding"));
    if !covered {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A backend's body, compressed as it streams.
pub struct Compressing {
    body: BackendBody,
    encoder: Encoder,
    state: State,
    /// Body bytes from the backend, for its traffic series.
    read: u64,
}

enum State {
    Reading,
    /// The backend's trailers, sent after the encoder's last bytes.
    Trailers(HeaderMap),
    Done,
}

impl Compressing {
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Trailers(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                State::Reading => self.state = State::Reading,
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                // The backend pauses: what it sent so far goes out now,
                // so that events and streamed pages are not held back.
                Poll::Pending => {
                    return match self.encoder.flush() {
                        Ok(Some(out)) => ready_data(out),
                        Ok(None) => Poll::Pending,
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.read += data.len() as u64;
                        match self.encoder.write(&data) {
                            Ok(Some(out)) => return ready_data(out),
                            Ok(None) => {}
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            return self.finish(State::Trailers(t));
                        }
                    }
                },
                None => return self.finish(State::Done),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn finish(&mut self, then: State) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = then;
        match self.encoder.finish() {
            Ok(tail) => ready_data(tail),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.read
    }
}

fn ready_data(data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(data))))
}

/// One of async-compression's encoders writing into memory, driven
/// synchronously: a `Vec` sink never makes a write wait.
struct Encoder {
    codec: Codec,
    /// Input went in since the last output was flushed.
    unflushed: bool,
}

enum Codec {
    Gzip(GzipEncoder<Vec<u8>>),
    // Boxed: brotli's state is 5 KiB, against 150 bytes for the others.
    Br(Box<BrotliEncoder<Vec<u8>>>),
    Zstd(ZstdEncoder<Vec<u8>>),
}

/// Brotli's window, 2^19 = 512 KiB as ngx_brotli's `brotli_window`
/// default, rather than the library's 4 MiB per response.
const BROTLI_WINDOW: i32 = 19;

impl Encoder {
    fn new(encoding: Encoding, levels: CompressLevels) -> Self {
        let sink = Vec::new();
        let codec = match encoding {
            Encoding::Gzip => Codec::Gzip(GzipEncoder::with_quality(
                sink,
                Level::Precise(levels.gzip as i32),
            )),
            Encoding::Br => {
                let params = EncoderParams::default()
                    .quality(Level::Precise(levels.br as i32))
                    .window_size(BROTLI_WINDOW);
                Codec::Br(Box::new(BrotliEncoder::with_params(sink, params)))
            }
            Encoding::Zstd => {
                Codec::Zstd(ZstdEncoder::with_quality(sink, Level::Precise(levels.zstd)))
            }
        };
        Encoder {
            codec,
            unflushed: false,
        }
    }

    /// Compresses `data`; what came out of the encoder, if anything yet.
    fn write(&mut self, mut data: &[u8]) -> io::Result<Option<Bytes>> {
        while !data.is_empty() {
            let n = self.step(|w, cx| w.poll_write(cx, data))?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
            self.unflushed = true;
        }
        Ok(self.take())
    }

    /// Everything written so far, decodable by the client now; None if
    /// nothing was written since the last flush.
    fn flush(&mut self) -> io::Result<Option<Bytes>> {
        if !self.unflushed {
            return Ok(None);
        }
        self.unflushed = false;
        self.step(|w, cx| w.poll_flush(cx))?;
        Ok(self.take())
    }

    /// The end of the compressed stream.
    fn finish(&mut self) -> io::Result<Bytes> {
        self.step(|w, cx| w.poll_shutdown(cx))?;
        Ok(self.take().unwrap_or_default())
    }

    /// Runs one step of the encoder; the sink being memory, it never waits.
    fn step<T>(
        &mut self,
        op: impl FnOnce(Pin<&mut (dyn AsyncWrite + Unpin)>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let mut cx = Context::from_waker(Waker::noop());
        let writer: Pin<&mut (dyn AsyncWrite + Unpin)> = match &mut self.codec {
            Codec::Gzip(e) => Pin::new(e as &mut (dyn AsyncWrite + Unpin)),
            Codec::Br(e) => Pin::new(&mut **e as &mut (dyn AsyncWrite + Unpin)),
            Codec::Zstd(e) => Pin::new(e as &mut (dyn AsyncWrite + Unpin)),
        };
        match op(writer, &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::Error::other("the encoder waited on memory")),
        }
    }

    /// What the encoder has produced so far, taken out of it.
    fn take(&mut self) -> Option<Bytes> {
        let sink = match &mut self.codec {
            Codec::Gzip(e) => e.get_mut(),
            Codec::Br(e) => e.get_mut(),
            Codec::Zstd(e) => e.get_mut(),
        };
        (!sink.is_empty()).then(|| Bytes::from(std::mem::take(sink)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(accept: &[&'static str], algorithms: &[Encoding]) -> Option<Encoding> {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_static(a));
        }
        let config = CompressConfig {
            algorithms: algorithms.to_vec(),
            ..CompressConfig::default()
        };
        negotiate(&config, &Method::GET, Version::HTTP_11, &h)
    }

    #[test]
    fn the_client_q_values_choose_and_the_server_order_breaks_ties() {
        use Encoding::*;
        let all = [Zstd, Br, Gzip];
        assert_eq!(choose(&[], &all), None);
        assert_eq!(choose(&["identity"], &all), None);
        assert_eq!(choose(&["gzip, deflate, br, zstd"], &all), Some(Zstd));
        assert_eq!(
            choose(&["gzip, deflate, br, zstd"], &[Gzip, Br]),
            Some(Gzip)
        );
        assert_eq!(choose(&["gzip;q=0.5, br;q=0.8"], &all), Some(Br));
        assert_eq!(choose(&["gzip;q=1.0, br;q=0.999"], &all), Some(Gzip));
        assert_eq!(choose(&["zstd;q=0, br ; Q=0.1"], &all), Some(Br));
        assert_eq!(choose(&["*"], &all), Some(Zstd));
        assert_eq!(choose(&["*;q=0.2, zstd;q=0.1"], &all), Some(Br));
        assert_eq!(choose(&["*;q=0, gzip"], &all), Some(Gzip));
        assert_eq!(choose(&["*;q=0"], &all), None);
        assert_eq!(choose(&["X-GZIP"], &all), Some(Gzip));
        assert_eq!(choose(&["deflate", "gzip;q=0.3"], &all), Some(Gzip));
        // A repeat cannot undo a refusal; malformed q-values refuse.
        assert_eq!(choose(&["gzip;q=0, gzip"], &all), None);
        assert_eq!(
            choose(&["gzip;q=2", "br;q=0.5.5", "zstd;q=abc"], &all),
            None
        );
        assert_eq!(choose(&[",,; ;=, gzip;q="], &all), None);
    }

    #[test]
    fn head_and_http_1_0_get_no_coding() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let c = CompressConfig::default();
        assert_eq!(negotiate(&c, &Method::HEAD, Version::HTTP_11, &h), None);
        assert_eq!(negotiate(&c, &Method::GET, Version::HTTP_10, &h), None);
        assert_eq!(
            negotiate(&c, &Method::POST, Version::HTTP_2, &h),
            Some(Encoding::Gzip)
        );
    }

    #[test]
    fn qvalues() {
        for (text, q) in [
            ("1", 1000),
            ("1.", 1000),
            ("1.000", 1000),
            ("0", 0),
            ("0.5", 500),
            ("0.05", 50),
            ("0.001", 1),
            ("1.001", 0),
            ("0.0001", 0),
            ("", 0),
            ("-1", 0),
            ("0.x", 0),
        ] {
            assert_eq!(qvalue(text.as_bytes()), q, "{text}");
        }
    }

    #[test]
    fn media_types_match_without_parameters_in_any_case() {
        let types = ["text/*".to_owned(), "application/json".to_owned()];
        let m = |ct: &str| type_matches(&types, ct.as_bytes());
        assert!(m("text/html"));
        assert!(m("Text/HTML; charset=utf-8"));
        assert!(m("application/json;charset=utf-8"));
        assert!(m(" application/JSON "));
        assert!(!m("text/"));
        assert!(!m("application/json-seq"));
        assert!(!m("image/png"));
        assert!(!m(""));
    }

    #[test]
    fn vary_is_appended_once() {
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Cookie"));
        add_vary(&mut h);
        add_vary(&mut h);
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Cookie", "Accept-Encoding"]);
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("*"));
        add_vary(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
    }

    #[test]
    fn each_encoder_round_trips_across_flushes() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} of a text\n").into_bytes())
            .collect();
        for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
            let mut e = Encoder::new(encoding, CompressLevels::default());
            let mut out = Vec::new();
            for (i, chunk) in text.chunks(7_000).enumerate() {
                out.extend(e.write(chunk).unwrap().unwrap_or_default());
                if i % 3 == 0 {
                    // A flush makes everything so far decodable.
                    out.extend(e.flush().unwrap().unwrap_or_default());
                    assert!(e.flush().unwrap().is_none());
                }
            }
            out.extend(e.finish().unwrap());
            assert!(out.len() < text.len() / 4, "{encoding:?}: {}", out.len());
            assert_eq!(decode(encoding, &out), text, "{encoding:?}");
        }
    }

    fn decode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::write::{BrotliDecoder, GzipDecoder, ZstdDecoder};
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            match encoding {
                Encoding::Gzip => {
                    let mut d = GzipDecoder::new(Vec::new());
                    d.write_all(data).await.unwrap();
                    d.shutdown().await.unwrap();
                    d.into_inner()
                }
                Encoding::Br => {
                    let mut d = BrotliDecoder::new(Vec::new());
                    d.write_all(data).await.unwrap();
                    d.shutdown().await.unwrap();
                    d.into_inner()
                }
                Encoding::Zstd => {
                    let mut d = ZstdDecoder::new(Vec::new());
                    d.write_all(data).await.unwrap();
                    d.shutdown().await.unwrap();
                    d.into_inner()
                }
            }
        })
    }
}
