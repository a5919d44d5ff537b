//! Serving HTTP/1.1 connections with the limits `axum::serve` does not have: a cap on
//! open connections, a deadline for each request's header (which also closes idle
//! keep-alive connections: hyper times the wait for the next header from the end of
//! the previous answer), and a shutdown that closes idle and half-sent connections at
//! once and gives requests in flight a grace period.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::protect::Arrival;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits of the HTTP server (settings of the same names, in `Config`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A request's header (or, on an idle keep-alive connection, the next one) must
    /// arrive within this.
    pub header_read_timeout: Duration,
    /// How long requests in flight may take to finish after a stop.
    pub shutdown_grace: Duration,
}

/// Accepts connections until `stop`, then shuts down gracefully (see the module).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Finished connections leave the set as new ones come.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for the handlers that want it (as `axum::serve` does).
        let app = app
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                // The head has just been read: the start of this request's wait.
                request.extensions_mut().insert(Arrival {
                    peer,
                    at: std::time::Instant::now(),
                });
                request
            });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Idle and half-sent connections close now; those with a request in flight close
    // once it is answered, or when the grace is over.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                open = connections.len(),
                "shutdown grace over: closing the connections still open"
            );
        }
    }
    connections.abort_all();
}
