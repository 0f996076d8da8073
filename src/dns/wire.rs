//! A DNS message's bytes in, the reply's bytes out, counted: the general
//! path of both transports (over UDP for what the fast path leaves, over
//! TCP for every message), and the catching of panics while answering.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Once;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use super::DnsData;
use super::answer;
use super::count::{count, count_malformed};
use super::querylog;
use super::rrl::Class;

/// Writes the reply to `message` (from `src` over `protocol`) into
/// `reply`, sized for the transport, and counts it; returns what the reply
/// is as RRL sees it, or None when nothing is to be sent: a message
/// without a whole header, a response.
pub(super) fn answer(
    data: &DnsData,
    message: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    reply: &mut Vec<u8>,
) -> Option<Class> {
    let request = match Request::from_bytes(message.to_vec(), src, protocol) {
        Ok(request) => request,
        Err(error) => {
            // Without a whole header there is no id to answer to.
            let header = Header::read(&mut BinDecoder::new(message)).ok()?;
            // Nor to a response, parsable or not (no reflection).
            if header.metadata.message_type != MessageType::Query {
                return None;
            }
            tracing::debug!(%src, %error, "FORMERR: unparsable query");
            form_error(&header.metadata, reply);
            count_malformed();
            if data.query_log_due() {
                querylog::log(data, message, src, protocol_name(protocol), reply, None);
            }
            return Some(Class::error());
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let built = answer::build(data, &request);
    count(data, &request, &built);
    let query = request.queries.queries().first();
    let class = Class::of_response(
        built.metadata.response_code,
        built.wildcard.as_ref().or(query.map(|q| &**q.name())),
        query.map_or(0, |q| q.query_type().into()),
        built.authorities.first().map(|soa| &soa.name),
    )
    .exempt(built.valid_cookie);
    let logged = data.query_log_due().then(|| built.geo.clone());
    answer::encode_sized(built, &request, reply);
    if let Some(geo) = logged {
        let protocol = protocol_name(protocol);
        querylog::log(data, message, src, protocol, reply, geo.as_ref());
    }
    Some(class)
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        _ => "udp",
    }
}

/// A reply to a message that could not be parsed: its id, opcode, RD and
/// CD, FORMERR, nothing else (what hickory-server would send).
fn form_error(request: &Metadata, reply: &mut Vec<u8>) {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = ResponseCode::FormErr;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    reply.clear();
    let mut encoder = BinEncoder::new(reply);
    if header.emit(&mut encoder).is_err() {
        reply.clear();
    }
}

/// Panics while answering are logged at most once per this interval (per
/// UDP thread, and once for all TCP connections), with the number left
/// unlogged since the last line.
const PANIC_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// A panic message is cut to this many characters in the log.
const PANIC_MESSAGE_MAX: usize = 160;

thread_local! {
    /// Set while this thread answers a packet under `catch_unwind`.
    static ANSWERING: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last panic while answering happened, as the
    /// panic hook saw it.
    static PANICKED_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once) a panic hook that, for a panic while a message is
/// answered under [`catching_panics`], only notes its location and message
/// for [`PanicLog`]: the default hook's output (and a backtrace with
/// `RUST_BACKTRACE`) for each packet of a flood would flood the log. Every
/// other panic goes to the hook that was there before.
pub(super) fn quiet_answer_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ANSWERING.get() {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info
                .location()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            let short: String = message.chars().take(PANIC_MESSAGE_MAX).collect();
            PANICKED_AT.with_borrow_mut(|at| *at = format!("{location}: {short}"));
        }));
    });
}

/// `f` under `catch_unwind`, its panic (if any) kept quiet by the hook of
/// [`quiet_answer_panics`] and returned as its location and message.
pub(super) fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    ANSWERING.set(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    ANSWERING.set(false);
    result.map_err(|_| PANICKED_AT.with_borrow_mut(std::mem::take))
}

/// Logs panics while answering as one short line at most per
/// [`PANIC_LOG_INTERVAL`], so that a flood of packets meeting a bug costs
/// no more log than one.
pub(super) struct PanicLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl PanicLog {
    pub(super) const fn new() -> PanicLog {
        PanicLog {
            last: None,
            suppressed: 0,
        }
    }

    pub(super) fn record(&mut self, src: SocketAddr, at: String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < PANIC_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(
            %src,
            panic = %at,
            suppressed = self.suppressed,
            "answering a DNS query panicked; dropped (suppressed: others since the last such line)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_answering_is_caught_quietly_with_its_place() {
        quiet_answer_panics();
        let caught = catching_panics(|| -> bool { panic!("boom {}", 42) });
        let at = caught.unwrap_err();
        assert!(
            at.contains("src/dns/wire.rs:") && at.ends_with(": boom 42"),
            "{at}"
        );
        let long = catching_panics(|| -> bool { panic!("{}", "x".repeat(5000)) });
        assert!(long.unwrap_err().len() < PANIC_MESSAGE_MAX + 100);
        assert_eq!(catching_panics(|| 7), Ok(7));
        assert!(!ANSWERING.get());
    }

    #[test]
    fn panics_are_logged_at_most_once_a_second_with_a_count() {
        let mut log = PanicLog::new();
        let src: SocketAddr = "192.0.2.1:53".parse().unwrap();
        log.record(src, "here".into());
        assert!(log.last.is_some());
        for _ in 0..5 {
            log.record(src, "here".into());
        }
        assert_eq!(log.suppressed, 5);
        log.last = Some(Instant::now() - PANIC_LOG_INTERVAL);
        log.record(src, "here".into());
        assert_eq!(log.suppressed, 0, "logged, with the 5 before");
    }
}
