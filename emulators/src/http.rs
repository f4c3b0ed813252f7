//! The server the HTTP emulators (Expo, FCM, APNs) share: one worker on the current actix
//! System, bound to the address asked for (port 0 for a free one), plain (HTTP/1.1 or h2c) or
//! TLS (ALPN h2 or http/1.1), with the emulator's state as app data. It installs no signal
//! handlers, because the test or `mock-providers` decides when an emulator stops. Also the admin
//! call every HTTP emulator takes, `POST /__emulator/fail`.

use crate::failure::{FailPlan, Failure};
use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{web, App, HttpResponse, HttpServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A running HTTP emulator and its state.
pub(crate) struct Server<S> {
    pub(crate) addr: SocketAddr,
    state: Arc<Mutex<S>>,
    handle: ServerHandle,
}

impl<S: Send + 'static> Server<S> {
    /// Serves `routes` on `addr` (over TLS with `tls`); the handlers find the state as
    /// `web::Data<Mutex<S>>`.
    pub(crate) fn start(
        addr: &str,
        state: S,
        tls: Option<rustls::ServerConfig>,
        routes: fn(&mut web::ServiceConfig),
    ) -> std::io::Result<Server<S>> {
        let state = Arc::new(Mutex::new(state));
        let data = web::Data::from(state.clone());
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).configure(routes)).workers(1).disable_signals();
        let server = match tls {
            // actix-web adds ALPN `h2` and `http/1.1` itself.
            Some(tls) => server.bind_rustls_0_23(addr, tls)?,
            // HTTP/1.1, or HTTP/2 with prior knowledge (the relay's FCM client speaks that to an
            // `http://` base URL).
            None => server.bind_auto_h2c(addr)?,
        };
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other(format!("{addr}: bound to no address")))?;
        let running = server.run();
        let handle = running.handle();
        actix_rt::spawn(running);
        Ok(Server { addr, state, handle })
    }

    /// The state itself, for a server in front of this one (APNs's HTTP/2 side).
    pub(crate) fn state(&self) -> Arc<Mutex<S>> {
        self.state.clone()
    }

    /// Runs `f` on the state; the default when a handler panicked holding it.
    pub(crate) fn with<T: Default>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        self.state.lock().map(|mut s| f(&mut s)).unwrap_or_default()
    }

    pub(crate) async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// An emulator state with a whole-request [`Failure`] slot.
pub(crate) trait Failing {
    fn failure(&mut self) -> &mut Failure;
}

/// `POST /__emulator/fail` with a [`FailPlan`]: in force from the next request.
pub(crate) async fn set_failure<S: Failing + 'static>(
    plan: web::Json<FailPlan>,
    state: web::Data<Mutex<S>>,
) -> HttpResponse {
    if let Ok(mut s) = state.lock() {
        s.failure().set(plan.into_inner());
    }
    HttpResponse::NoContent().finish()
}

/// Sets `Retry-After: <seconds>` on an answer.
pub(crate) fn retry_after(resp: &mut HttpResponse, seconds: u64) {
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
}
