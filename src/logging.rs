//! Where log lines go and in what shape (`[log]`): text or JSON, to stderr
//! or a file, access lines (targets `geolb::access*`) optionally to a file
//! of their own; files reopened on SIGUSR1 for logrotate.
//!
//! Every line is formatted on the thread that logs it, then handed to one
//! writer thread through a bounded channel: a slow disk or a stalled
//! journald pipe never blocks a serving thread. When the channel is full a
//! line is dropped, counted, and the next line written says how many were
//! (as tracing-appender's lossy mode, or nginx's `open_file_cache` writes,
//! do the same trade). Lines stay in order, and a reopen is a message in
//! the same channel: every line logged after [`reopen`] is asked for goes
//! to the new file.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Lines waiting for the writer thread at most; past it they are dropped.
/// 16,384 lines of a few hundred bytes: a few MB at worst.
const QUEUE: usize = 16 * 1024;

/// How long the process waits at exit for the lines still queued.
const EXIT_FLUSH: Duration = Duration::from_secs(5);

/// The filter when `GEOLB_LOG` is unset.
///
/// hickory logs every query at info and every bad OPT at warn; rustls
/// logs a bad ClientHello at warn (a 60 KB SNI in full), h2 a client's
/// rapid resets: per connection, what a client chose. geolb logs those
/// itself, limited (`geolb::log_limited!`).
pub const DEFAULT_FILTER: &str =
    "info,hickory_server=warn,hickory_proto=error,rustls=error,h2=error";

/// The target prefix of access lines (HTTP `geolb::access`, TCP
/// `geolb::access::tcp`, DNS `geolb::access::dns`).
pub const ACCESS_TARGET: &str = "geolb::access";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Main,
    Access,
}

enum Msg {
    Line(Dest, Vec<u8>),
    Reopen,
    /// Flush, say so on the channel given, and stop.
    Stop(SyncSender<()>),
}

struct Shared {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    /// A reopen asked for while the queue was full: done after the next line.
    reopen_pending: AtomicBool,
    /// Whether access lines have a file of their own.
    split: bool,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Set up by [`init`]; dropping it writes out the lines still queued
/// (waiting at most [`EXIT_FLUSH`]).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        stop_writer(&self.shared, EXIT_FLUSH);
    }
}

/// Asks the writer to write out what is queued and stop, waiting at most
/// `limit`, also when a stuck disk keeps the queue full.
fn stop_writer(shared: &Shared, limit: Duration) {
    let deadline = Instant::now() + limit;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let mut stop = Msg::Stop(done_tx);
    loop {
        match shared.tx.try_send(stop) {
            Ok(()) => {
                let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
                return;
            }
            Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                stop = again;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// Installs the process's logger: `GEOLB_LOG` (or [`DEFAULT_FILTER`])
/// chooses the lines, `config` their format and destinations. Fails when
/// a file cannot be opened, or a logger is already installed.
pub fn init(config: &LogConfig) -> io::Result<Guard> {
    let main = Sink::open(config.file.as_deref())?;
    let access = match &config.access_file {
        Some(path) => Some(Sink::open(Some(path))?),
        None => None,
    };
    let to_terminal = main.is_stderr() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let shared = Arc::new(Shared {
        tx,
        dropped: AtomicU64::new(0),
        reopen_pending: AtomicBool::new(false),
        split: access.is_some(),
    });
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("log writer".into())
        .spawn(move || write_lines(&rx, &thread_shared, main, access))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GEOLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let writer = LineWriter(shared.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Text => builder.with_ansi(to_terminal).try_init(),
        LogFormat::Json => builder.event_format(Json).try_init(),
    };
    installed.map_err(|e| io::Error::other(e.to_string()))?;
    let _ = SHARED.set(shared.clone());
    Ok(Guard { shared })
}

/// Reopens the log files at their paths (SIGUSR1, after logrotate renamed
/// them); lines logged from now on go to the new files. A file that cannot
/// be reopened is kept, and the failure logged. Nothing without [`init`]
/// or a file.
pub fn reopen() {
    if let Some(shared) = SHARED.get() {
        ask_reopen(shared);
    }
}

/// A reopen in the queue's order; with the queue full, right after the
/// next line instead (never waiting).
fn ask_reopen(shared: &Shared) {
    if let Err(TrySendError::Full(_)) = shared.tx.try_send(Msg::Reopen) {
        shared.reopen_pending.store(true, Ordering::Relaxed);
    }
}

/// Hands each formatted line to the writer thread.
struct LineWriter(Arc<Shared>);

/// One line being written: formatted into `buf`, sent on drop.
struct Line<'a> {
    shared: &'a Shared,
    dest: Dest,
    buf: Vec<u8>,
}

impl io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match self.shared.tx.try_send(Msg::Line(self.dest, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer stopped (the process is exiting).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            dest: Dest::Main,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        let dest = if self.0.split && is_access(meta.target()) {
            Dest::Access
        } else {
            Dest::Main
        };
        Line {
            shared: &self.0,
            dest,
            buf: Vec::new(),
        }
    }
}

fn is_access(target: &str) -> bool {
    target
        .strip_prefix(ACCESS_TARGET)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// A destination: stderr, or a file kept open (and its path, to reopen).
enum Sink {
    Stderr(BufWriter<io::Stderr>),
    File { path: PathBuf, out: BufWriter<File> },
}

impl Sink {
    fn open(path: Option<&Path>) -> io::Result<Sink> {
        Ok(match path {
            None => Sink::Stderr(BufWriter::new(io::stderr())),
            Some(path) => Sink::File {
                path: path.to_path_buf(),
                out: BufWriter::new(open_log_file(path)?),
            },
        })
    }

    fn is_stderr(&self) -> bool {
        matches!(self, Sink::Stderr(_))
    }

    fn out(&mut self) -> &mut dyn io::Write {
        match self {
            Sink::Stderr(out) => out,
            Sink::File { out, .. } => out,
        }
    }

    /// Opens the file at its path again; the old one is kept on failure.
    fn reopen(&mut self) -> io::Result<()> {
        let Sink::File { path, out } = self else {
            return Ok(());
        };
        let file = open_log_file(path)?;
        // Whatever is buffered was logged before the reopen: the old file's.
        let _ = out.flush();
        *out = BufWriter::new(file);
        Ok(())
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Sink::Stderr(_) => None,
            Sink::File { path, .. } => Some(path),
        }
    }
}

fn open_log_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })
}

/// The writer thread: writes lines as they come, flushes whenever the
/// queue is empty (so a quiet daemon's lines are on disk at once, a busy
/// one's in large writes), reopens when asked.
fn write_lines(rx: &Receiver<Msg>, shared: &Shared, mut main: Sink, mut access: Option<Sink>) {
    let mut failed = false;
    let mut next = rx.recv().ok();
    while let Some(msg) = next {
        match msg {
            Msg::Line(dest, line) => {
                let sink = match (dest, access.as_mut()) {
                    (Dest::Access, Some(access)) => access,
                    _ => &mut main,
                };
                let written = sink.out().write_all(&line);
                // Said once per run of failures (a full disk), not per line.
                match written {
                    Err(e) if !failed => {
                        failed = true;
                        let _ = writeln!(io::stderr(), "geolb: cannot write the log: {e}");
                    }
                    Err(_) => {}
                    Ok(()) => failed = false,
                }
            }
            Msg::Reopen => reopen_all(&mut main, access.as_mut()),
            Msg::Stop(done) => {
                let _ = main.out().flush();
                if let Some(a) = access.as_mut() {
                    let _ = a.out().flush();
                }
                let _ = done.send(());
                return;
            }
        }
        if shared.reopen_pending.swap(false, Ordering::Relaxed) {
            reopen_all(&mut main, access.as_mut());
        }
        next = match rx.try_recv() {
            Ok(msg) => Some(msg),
            Err(_) => {
                let _ = main.out().flush();
                if let Some(a) = access.as_mut() {
                    let _ = a.out().flush();
                }
                let dropped = shared.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "log lines dropped: the log destination was slower than the lines came"
                    );
                }
                rx.recv().ok()
            }
        };
    }
}

fn reopen_all(main: &mut Sink, access: Option<&mut Sink>) {
    for sink in std::iter::once(main).chain(access) {
        let Some(path) = sink.path().map(Path::to_path_buf) else {
            continue;
        };
        match sink.reopen() {
            Ok(()) => tracing::info!(file = %path.display(), "SIGUSR1: log file reopened"),
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "SIGUSR1: cannot reopen the log file; writing on to the old one"
            ),
        }
    }
}

/// One JSON object per line: `ts` (RFC 3339, UTC, microseconds), `level`,
/// `target`, `msg`, then the event's fields, numbers and booleans as
/// such, everything else as strings. A field named like one of the four
/// gets a `_` appended (`target_`).
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = json_line(SystemTime::now(), event);
        writer.write_str(&line)
    }
}

fn json_line(now: SystemTime, event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut fields = String::new();
    let mut visitor = JsonFields {
        out: &mut fields,
        msg: None,
        log_target: None,
    };
    event.record(&mut visitor);
    let (msg, log_target) = (visitor.msg.take(), visitor.log_target.take());
    let mut out = String::with_capacity(128 + fields.len());
    out.push_str("{\"ts\":\"");
    rfc3339(&mut out, now);
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push_str("\",\"target\":");
    push_json_str(&mut out, log_target.as_deref().unwrap_or(meta.target()));
    out.push_str(&fields);
    out.push_str(",\"msg\":");
    push_json_str(&mut out, msg.as_deref().unwrap_or_default());
    out.push_str("}\n");
    out
}

struct JsonFields<'a> {
    out: &'a mut String,
    msg: Option<String>,
    /// A `log` crate record's own target (rustls logs through `log`):
    /// shown as the target, as the text format does.
    log_target: Option<String>,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        let name = field.name();
        self.out.push(',');
        if matches!(name, "ts" | "level" | "target" | "msg") {
            let renamed = format!("{name}_");
            push_json_str(self.out, &renamed);
        } else {
            push_json_str(self.out, name);
        }
        self.out.push(':');
    }

    fn raw(&mut self, field: &Field, value: impl fmt::Display) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
}

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => {
                self.msg = Some(value.to_owned());
                return;
            }
            "log.target" => {
                self.log_target = Some(value.to_owned());
                return;
            }
            // Where in a library's source: not for an operator's log.
            "log.module_path" | "log.file" => return,
            _ => {}
        }
        self.key(field);
        push_json_str(self.out, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, value);
        } else {
            self.raw(field, "null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() != "log.line" {
            self.raw(field, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = value.to_string();
        self.record_str(field, &text);
    }
}

/// `s` as a JSON string: quoted, with `"`, `\` and every control
/// character escaped (so no value can end the line).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // U+2028/2029 end lines for some JavaScript readers.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `t` as `2026-11-30T19:00:22.123456Z`.
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    let mut out = String::new();
    rfc3339(&mut out, t);
    out
}

/// `now` as `2026-11-30T19:00:22.123456Z`.
fn rfc3339(out: &mut String, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u64| {
            let mut s = String::new();
            rfc3339(
                &mut s,
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            );
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_796_065_222, 123_456), "2026-11-30T19:00:22.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn json_strings_cannot_break_the_line() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1b}[31me\u{7f}\u{2028}é");
        assert_eq!(s, r#""a\"b\\c\nd\u001b[31me\u007f\u2028é""#);
        assert!(!s.contains('\n'));
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1b}[31me\u{7f}\u{2028}é");
    }

    #[test]
    fn access_targets_and_only_those() {
        assert!(is_access("geolb::access"));
        assert!(is_access("geolb::access::tcp"));
        assert!(is_access("geolb::access::dns"));
        assert!(!is_access("geolb::accessible"));
        assert!(!is_access("geolb::proxy::http"));
    }

    /// Lines go to the file they were logged for, in order, across a
    /// rename and a reopen; nothing is lost.
    #[test]
    fn lines_after_a_reopen_go_to_the_new_file_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (path, access_path) = (dir.path().join("main.log"), dir.path().join("access.log"));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            tx,
            dropped: AtomicU64::new(0),
            reopen_pending: AtomicBool::new(false),
            split: true,
        });
        let line = |dest, text: &str| Msg::Line(dest, format!("{text}\n").into_bytes());
        // Queued before the writer starts: the order is the queue's.
        let tx = &shared.tx;
        tx.send(line(Dest::Main, "main 1")).unwrap();
        tx.send(line(Dest::Access, "access 1")).unwrap();
        let main = Sink::open(Some(&path)).unwrap();
        let access = Sink::open(Some(&access_path)).unwrap();
        std::fs::rename(&path, dir.path().join("main.log.1")).unwrap();
        std::fs::rename(&access_path, dir.path().join("access.log.1")).unwrap();
        tx.send(Msg::Reopen).unwrap();
        tx.send(line(Dest::Main, "main 2")).unwrap();
        tx.send(line(Dest::Access, "access 2")).unwrap();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Stop(done_tx)).unwrap();
        write_lines(&rx, &shared, main, Some(access));
        done_rx.try_recv().unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("main.log.1"), "main 1\n");
        assert_eq!(read("access.log.1"), "access 1\n");
        assert_eq!(read("main.log"), "main 2\n");
        assert_eq!(read("access.log"), "access 2\n");
    }

    /// A full queue drops the line and counts it; the caller never waits.
    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, rx) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            tx,
            dropped: AtomicU64::new(0),
            reopen_pending: AtomicBool::new(false),
            split: false,
        });
        let writer = LineWriter(shared.clone());
        for text in ["one\n", "two\n", "three\n"] {
            writer.make_writer().write_all(text.as_bytes()).unwrap();
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
        match rx.try_recv() {
            Ok(Msg::Line(Dest::Main, line)) => assert_eq!(line, b"one\n"),
            _ => panic!("the first line"),
        }
        // A reopen asked for while full is kept for later.
        writer.make_writer().write_all(b"four\n").unwrap();
        ask_reopen(&shared);
        assert!(shared.reopen_pending.load(Ordering::Relaxed));
        // Exit does not wait for a writer that never drains the queue.
        let at = Instant::now();
        stop_writer(&shared, Duration::from_millis(50));
        assert!(at.elapsed() < Duration::from_secs(2));
        drop(rx);
    }

    /// A subscriber formatting with [`Json`] into a buffer, for one event.
    fn json_of(log: impl FnOnce()) -> serde_json::Value {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                crate::locked(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Json)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(crate::locked(&buf.0).clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn json_lines_carry_the_fields_with_their_types() {
        let v = json_of(|| {
            tracing::info!(
                target: "geolb::access",
                client = %"192.0.2.1",
                status = 200u16,
                duration_ms = 1.5,
                retries = 0u32,
                ok = true,
                user_agent = "curl/8\n\u{1b}x",
                target = "a backend",
                "request"
            )
        });
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "geolb::access");
        assert_eq!(v["msg"], "request");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["user_agent"], "curl/8\n\u{1b}x");
        assert_eq!(v["target_"], "a backend");
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        let v = json_of(|| tracing::warn!(error = %"boom", "reload refused: {}", "x = 1"));
        assert_eq!(v["msg"], "reload refused: x = 1");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["error"], "boom");
        // A `log` crate record, as tracing-log hands it over.
        let v = json_of(|| {
            tracing::error!(
                "log.target" = "rustls::server",
                "log.module_path" = "rustls::server::hs",
                "log.file" = "src/server/hs.rs",
                "log.line" = 42u64,
                "bad hello"
            )
        });
        assert_eq!(v["target"], "rustls::server");
        assert_eq!(v["msg"], "bad hello");
        assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    }
}
