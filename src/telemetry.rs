//! Structured logs on stdout, written by a background thread (slog-async) so that logging never
//! blocks an actor on I/O: one JSON object per line (slog-json) for log agents, or one readable
//! line per event for a person at a terminal (`log.format = pretty`, the default there).

use crate::configuration::LogFormat;
use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Keeps the async drain alive; dropping it flushes what is still queued.
pub struct LogGuard(#[allow(dead_code)] Option<slog_async::AsyncGuard>);

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
    // A write that fails (stdout closed) loses that line; it must not panic the log thread.
    let lines: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
        LogFormat::Json => Box::new(slog_json::Json::new(out).add_default_keys().set_flush(false).build().ignore_res()),
        LogFormat::Pretty => Box::new(Pretty(Mutex::new(out)).ignore_res()),
    };
    let (drain, guard) = slog_async::Async::new(lines)
        .chan_size(16_384)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log".into())
        .build_with_guard();
    let drain = drain.filter_level(level).ignore_res();
    let log = Logger::root(drain, o!("service" => "notify-relay", "version" => env!("CARGO_PKG_VERSION")));
    (log, LogGuard(Some(guard)))
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
