//! Errors of the engine. An actor that meets one of these stops, and its supervisor restarts it
//! with backoff; no error is ever a reason to lose or acknowledge work.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Connecting over TLS failed: `hint` names the cause and the setting that fixes it.
    #[error("redis: {hint} ({source})")]
    RedisTls { hint: String, source: redis::RedisError },
    #[error("actor mailbox: {0}")]
    Mailbox(#[from] actix::MailboxError),
    #[error("the LISTEN connection was lost: {0}")]
    ListenLost(String),
    #[error("panicked: {0}")]
    Panic(String),
    /// A provider's settings cannot be used (a key that does not parse…). Boxed so that the
    /// error type depends on nothing of the engine's (see `providers::ProviderError`).
    #[error("provider configuration: {0}")]
    Provider(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// The message of a panic payload, for `last_error` and the log.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        EngineError::Panic(msg)
    }

    /// Whether Postgres refused a statement because of the data it carried (a value it cannot
    /// store, a constraint, a trigger's exception): retrying the same rows will fail the same
    /// way, so the caller must isolate them instead. Connection losses, timeouts, deadlocks and
    /// shutdowns are not refusals: retrying those is right.
    pub fn is_refused_write(&self) -> bool {
        let EngineError::Postgres(e) = self else { return false };
        let Some(state) = e.code() else { return false };
        // 22 data exception, 23 integrity constraint, 42 syntax/access (a changed schema),
        // 54 program limit exceeded, P0 PL/pgSQL raise (a trigger's refusal).
        ["22", "23", "42", "54", "P0"].iter().any(|class| state.code().starts_with(class))
    }

    /// The error with its source chain, for logs and `last_error`.
    pub fn chain(&self) -> String {
        with_sources(self)
    }
}

/// An error's message followed by its sources' (tokio-postgres says only "db error" at the top).
pub fn with_sources(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
