//! Structured logs: one JSON object per line on stdout (slog + slog-json), written by a
//! background thread (slog-async) so that logging never blocks an actor on I/O.

use slog::{o, Drain, Level, Logger};

/// Keeps the async drain alive; dropping it flushes what is still queued.
pub struct LogGuard(#[allow(dead_code)] Option<slog_async::AsyncGuard>);

/// A JSON logger at `level`, with `service` and `version` on every line.
pub fn logger(level: Level) -> (Logger, LogGuard) {
    let json = slog_json::Json::new(std::io::stdout()).add_default_keys().set_flush(false).build().fuse();
    let (drain, guard) = slog_async::Async::new(json)
        .chan_size(16_384)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .thread_name("log".into())
        .build_with_guard();
    let drain = drain.filter_level(level).fuse();
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
