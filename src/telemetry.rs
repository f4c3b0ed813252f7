//! Structured logs: one JSON object per line on stdout (slog + slog-json), written by a
//! background thread (slog-async) so that logging never blocks an actor on I/O.

use slog::{o, Drain, Level, Logger};

/// Keeps the async drain alive; dropping it flushes what is still queued.
pub struct LogGuard(#[allow(dead_code)] Option<slog_async::AsyncGuard>);

/// A JSON logger at `level`, with `service` and `version` on every line.
pub fn logger(level: Level) -> (Logger, LogGuard) {
    logger_to(std::io::stdout(), level)
}

/// The same logger, writing to `out`. When `out` cannot keep up (a stalled pipe, a log agent
/// that stopped reading), lines are dropped and the drop is reported once the writer catches
/// up: logging must never stall the actors and arbiters that log.
pub fn logger_to(out: impl std::io::Write + Send + 'static, level: Level) -> (Logger, LogGuard) {
    // A write that fails (stdout closed) loses that line; it must not panic the log thread.
    let json = slog_json::Json::new(out).add_default_keys().set_flush(false).build().ignore_res();
    let (drain, guard) = slog_async::Async::new(json)
        .chan_size(16_384)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log".into())
        .build_with_guard();
    let drain = drain.filter_level(level).ignore_res();
    let log = Logger::root(drain, o!("service" => "notify-relay", "version" => env!("CARGO_PKG_VERSION")));
    (log, LogGuard(Some(guard)))
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
    fn a_stalled_output_drops_lines_instead_of_blocking_the_logger() {
        let (release, stalled) = mpsc::channel();
        let (log, guard) = logger_to(Stalled(stalled), Level::Info);
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
