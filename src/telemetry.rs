//! Structured logs on stdout, written by a background thread (slog-async) so that logging never
//! blocks an actor on I/O: one JSON object per line (slog-json) for log agents, or one readable
//! line per event for a person at a terminal (`log.format = pretty`, the default there).
//!
//! The log thread hands whole lines to a batch that is written out when it holds
//! [`BATCH_BYTES`] or has waited [`FLUSH_EVERY`], whichever comes first. Stdout itself is
//! line-buffered: at full speed the relay logs three lines per notification, and one `write`
//! per line cost the log thread most of its time (a 20 s profile of a 1M run: 9.5 % of the
//! machine's CPU in that thread, two thirds of it in the kernel; bench/README). A write carries
//! whole lines only, so a log agent never sees half of one.

use crate::configuration::LogFormat;
use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a line waits in the batch before it is written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this big is written out at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Keeps the log thread and the batch's flusher alive; dropping it writes out everything still
/// queued or batched.
pub struct LogGuard {
    drain: Option<slog_async::AsyncGuard>,
    flusher: Option<Flusher>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // The log thread first: it hands its last lines to the batch, which the flusher then
        // writes out.
        drop(self.drain.take());
        drop(self.flusher.take());
    }
}

/// A JSON logger at `level`, with `service` and `version` on every line.
pub fn logger(level: Level) -> (Logger, LogGuard) {
    logger_as(LogFormat::Json, level)
}

/// A logger on stdout in `format` at `level`.
pub fn logger_as(format: LogFormat, level: Level) -> (Logger, LogGuard) {
    logger_to(std::io::stdout(), format, level)
}

/// The same logger, writing to `out`. When `out` cannot keep up (a stalled pipe, a log agent
/// that stopped reading), lines are dropped and the drop is reported once the writer catches
/// up: logging must never stall the actors and arbiters that log.
pub fn logger_to(out: impl std::io::Write + Send + 'static, format: LogFormat, level: Level) -> (Logger, LogGuard) {
    let batch = Arc::new(Batch { lines: Mutex::new(Pending { bytes: Vec::with_capacity(BATCH_BYTES), out }) });
    // Without its flusher (the thread could not start) the batch would hold a quiet logger's
    // lines indefinitely: every line is then written out as it comes, as stdout would.
    let flusher = Flusher::start(Arc::clone(&batch)).ok();
    let limit = if flusher.is_some() { BATCH_BYTES } else { 0 };
    let lines = Lines { line: Vec::with_capacity(1024), limit, batch };
    // A write that fails (stdout closed) loses what it carried; it must not panic the log thread.
    let lines: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
        LogFormat::Json => {
            Box::new(slog_json::Json::new(lines).add_default_keys().set_flush(false).build().ignore_res())
        }
        LogFormat::Pretty => Box::new(Pretty(Mutex::new(lines)).ignore_res()),
    };
    let (drain, guard) = slog_async::Async::new(lines)
        .chan_size(16_384)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log".into())
        .build_with_guard();
    let drain = drain.filter_level(level).ignore_res();
    let log = Logger::root(drain, o!("service" => "notify-relay", "version" => env!("CARGO_PKG_VERSION")));
    (log, LogGuard { drain: Some(guard), flusher })
}

/// The log thread's writer: collects the pieces a record is written in and hands each whole
/// line (a write that ends with a newline) to the batch.
struct Lines<W> {
    line: Vec<u8>,
    /// The batch is written out once it holds this many bytes.
    limit: usize,
    batch: Arc<Batch<W>>,
}

impl<W: std::io::Write> std::io::Write for Lines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        if buf.ends_with(b"\n") {
            let mut pending = self.batch.lock();
            pending.bytes.extend_from_slice(&self.line);
            self.line.clear();
            if pending.bytes.len() >= self.limit {
                pending.write_out()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whole lines waiting to be written out, and where they go.
struct Batch<W> {
    lines: Mutex<Pending<W>>,
}

struct Pending<W> {
    bytes: Vec<u8>,
    out: W,
}

impl<W> Batch<W> {
    fn lock(&self) -> MutexGuard<'_, Pending<W>> {
        self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<W: std::io::Write> Pending<W> {
    /// Writes the batch out in one go. A batch the output refuses is lost, as a line was before.
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all(&self.bytes).and_then(|()| self.out.flush());
        self.bytes.clear();
        written
    }
}

/// Writes the batch out every [`FLUSH_EVERY`], so that a line is never held back longer by a
/// quiet logger, and once more when stopped.
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start<W: std::io::Write + Send + 'static>(batch: Arc<Batch<W>>) -> std::io::Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("log-flush".into()).spawn(move || {
            let (flag, wake) = &*stopped;
            loop {
                // The flag's lock is not held while writing: a stalled output must not keep
                // `Drop` from setting it.
                let stop = {
                    let flag = flag.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let waited = wake.wait_timeout_while(flag, FLUSH_EVERY, |stop| !*stop);
                    *waited.unwrap_or_else(|poisoned| poisoned.into_inner()).0
                };
                let _ = batch.lock().write_out();
                if stop {
                    return;
                }
            }
        })?;
        Ok(Flusher { stop, thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line per event for a person: `19:04:05.123 INFO  delivered  event=SEND_SUCCESS
/// notification_id=… provider=expo`. The same keys as the JSON lines, minus `service` and
/// `version` (said once at start-up by the JSON format, noise on a terminal).
struct Pretty<W>(Mutex<W>);

impl<W: std::io::Write> Drain for Pretty<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), std::io::Error> {
        let mut line = format!(
            "{} {:<5} {}",
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            record.level().as_short_str(),
            record.msg()
        );
        // The record's own keys first (event, ids), then the logger's, each in the order they
        // were written (slog hands them over last first).
        for kv in [&record.kv() as &dyn KV, values as &dyn KV] {
            let mut pairs = Pairs(Vec::new());
            let _ = kv.serialize(record, &mut pairs);
            for pair in pairs.0.iter().rev() {
                line.push_str(pair);
            }
        }
        line.push('\n');
        let mut out = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(line.as_bytes())
    }
}

/// `key=value` pairs; values with spaces or quotes are quoted, so a line still splits on spaces.
struct Pairs(Vec<String>);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        if key == "service" || key == "version" {
            return Ok(());
        }
        let value = value.to_string();
        let mut pair = String::new();
        if value.is_empty() || value.contains([' ', '"', '=']) || value.contains(char::is_control) {
            let _ = write!(pair, "  {key}={value:?}");
        } else {
            let _ = write!(pair, "  {key}={value}");
        }
        self.0.push(pair);
        Ok(())
    }
}

/// A logger that drops everything (tests).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// Panics are logged as JSON like everything else, then the default hook runs.
pub fn log_panics(log: Logger) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        slog::crit!(log, "panic"; "event" => "PANIC", "detail" => info.to_string());
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use emulators::testing::Captured;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A writer that never returns, like stdout into a pipe nobody reads.
    struct Stalled(mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::other("released"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_pretty_format_is_one_readable_line_per_event_with_its_keys() {
        let out = Captured::default();
        let (log, guard) = logger_to(out.clone(), LogFormat::Pretty, Level::Info);
        slog::info!(log, "delivered"; "event" => "SEND_SUCCESS", "provider" => "expo", "error" => "HTTP 503: try later");
        slog::debug!(log, "below the level");
        drop(log);
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        assert!(
            line.contains(" INFO  delivered  event=SEND_SUCCESS  provider=expo  error=\"HTTP 503: try later\""),
            "{line}"
        );
        assert!(!line.contains("service=") && !line.starts_with('{'), "{line}");
    }

    #[test]
    fn the_json_format_is_one_object_per_line() {
        let out = Captured::default();
        let (log, guard) = logger_to(out.clone(), LogFormat::Json, Level::Info);
        slog::info!(log, "delivered"; "event" => "SEND_SUCCESS");
        drop(log);
        drop(guard);
        let text = out.text();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!((line["msg"].as_str(), line["event"].as_str()), (Some("delivered"), Some("SEND_SUCCESS")));
        assert_eq!(line["service"], "notify-relay");
    }

    /// Keeps every write it is given, as it was given.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl std::io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("a writer panicked"))?.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_out_in_few_writes_each_of_whole_lines() {
        let writes = Writes::default();
        let (log, guard) = logger_to(writes.clone(), LogFormat::Json, Level::Info);
        let lines = 10_000;
        for i in 0..lines {
            slog::info!(log, "delivered"; "event" => "SEND_SUCCESS", "i" => i);
        }
        drop(log);
        drop(guard);
        let writes = writes.0.lock().unwrap().clone();
        assert!(writes.iter().all(|w| w.ends_with(b"\n")), "a write ended inside a line");
        let text = String::from_utf8(writes.concat()).unwrap();
        let numbers: Vec<u64> = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["i"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..lines).collect::<Vec<u64>>());
        // One write per line before the batch; now one per 64 KiB or per FLUSH_EVERY.
        assert!(writes.len() < lines as usize / 10, "{} writes for {lines} lines", writes.len());
    }

    #[test]
    fn a_quiet_loggers_last_line_is_written_out_without_waiting_for_more() {
        let out = Captured::default();
        let (log, guard) = logger_to(out.clone(), LogFormat::Json, Level::Info);
        slog::info!(log, "listening"; "event" => "STARTED");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !out.text().contains("STARTED") {
            assert!(std::time::Instant::now() < deadline, "the line stayed in the batch");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(log);
        drop(guard);
        assert_eq!(out.text().lines().count(), 1);
    }

    /// Refuses its first write (stdout closed for a moment), then keeps what it is given.
    #[derive(Clone, Default)]
    struct FailsOnce {
        refused: Arc<std::sync::atomic::AtomicBool>,
        kept: Captured,
    }

    impl std::io::Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("refused"));
            }
            self.kept.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_the_output_refuses_is_lost_and_the_lines_after_it_go_out() {
        let out = FailsOnce::default();
        let (log, guard) = logger_to(out.clone(), LogFormat::Json, Level::Info);
        let until = |what: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !what() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        slog::info!(log, "first"; "event" => "LOST");
        until(&|| out.refused.load(std::sync::atomic::Ordering::SeqCst));
        slog::info!(log, "second"; "event" => "KEPT");
        until(&|| out.kept.text().contains("KEPT"));
        drop(log);
        drop(guard);
        let text = out.kept.text();
        assert!(!text.contains("LOST") && text.lines().count() == 1, "{text}");
    }

    #[test]
    fn a_stalled_output_drops_lines_instead_of_blocking_the_logger() {
        let (release, stalled) = mpsc::channel();
        let (log, guard) = logger_to(Stalled(stalled), LogFormat::Json, Level::Info);
        let (done, finished) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            // Far more lines than the channel holds: with a blocking drain this never ends.
            for i in 0..100_000 {
                slog::info!(log, "line"; "i" => i);
            }
            let _ = done.send(());
        });
        let finished = finished.recv_timeout(Duration::from_secs(30));
        drop(release);
        assert!(finished.is_ok(), "logging blocked on a stalled output");
        writer.join().expect("writer thread");
        drop(guard);
    }
}
