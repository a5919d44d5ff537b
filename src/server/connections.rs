//! Serving HTTP/1.1 connections with the limits `axum::serve` does not have: a cap on
//! open connections, and on those of one address (an IPv6 client by its /64), so that
//! one host cannot take every slot; a bound on each connection's read buffer (hyper's
//! default, ~400 KiB, let a thousand half-sent headers take 400 MB); a deadline for each
//! request's header (which also closes idle keep-alive connections: hyper times the wait
//! for the next header from the end of the previous answer), and a shutdown that closes
//! idle and half-sent connections at once and gives requests in flight a grace period.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use axum::Router;

use crate::config::HttpLimits;
use crate::protect::{Arrival, TrustedProxies};
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
    /// Connections open at once from one address (IPv6: one /64); a trusted proxy's
    /// are not counted against it.
    pub max_connections_per_ip: usize,
    /// Largest read buffer of a connection, in bytes: a request's header must fit.
    pub max_buffer: usize,
    /// A request's header (or, on an idle keep-alive connection, the next one) must
    /// arrive within this.
    pub header_read_timeout: Duration,
    /// How long requests in flight may take to finish after a stop.
    pub shutdown_grace: Duration,
}

impl ConnectionLimits {
    /// The public listener's limits, from the settings.
    pub fn from_config(http: &HttpLimits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: http.max_connections,
            max_connections_per_ip: match http.max_connections_per_ip {
                0 => (http.max_connections / 4).max(1),
                n => n,
            },
            max_buffer: http.max_header_buffer,
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
        }
    }
}

/// Accepts connections until `stop`, then shuts down gracefully (see the module).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    trusted_proxies: Arc<TrustedProxies>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buffer);
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
        let address = (!trusted_proxies.trusts(peer.ip()))
            .then(|| per_address.take(peer.ip(), limits.max_connections_per_ip));
        let address_slot = match address {
            Some(None) => {
                tracing::debug!(%peer, "connection limit of this address reached: closed");
                drop(stream);
                continue;
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
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
            drop((slot, address_slot));
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

/// Connections open per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<AddressKey, usize>>);

/// An IPv4 address, or the /64 of an IPv6 one (one host usually holds a whole /64).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum AddressKey {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl AddressKey {
    fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One connection of an address, counted until dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: AddressKey,
}

impl PerAddress {
    /// A slot for one more connection of `ip`, if it holds fewer than `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let key = AddressKey::of(ip);
        let mut open = self.0.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let table = Arc::new(PerAddress::default());
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| table.take(one, 3).expect("under the cap"))
            .collect();
        assert!(table.take(one, 3).is_none(), "the fourth is refused");
        assert!(
            table.take("10.0.0.2".parse().unwrap(), 3).is_some(),
            "another address is not"
        );
        drop(held);
        assert!(table.take(one, 3).is_some());
        assert!(
            table.0.lock().len() <= 1,
            "an address with none open is forgotten"
        );
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let table = Arc::new(PerAddress::default());
        let _a = table.take("2001:db8:1:2::1".parse().unwrap(), 2).unwrap();
        let _b = table
            .take("2001:db8:1:2::ffff".parse().unwrap(), 2)
            .unwrap();
        assert!(
            table
                .take("2001:db8:1:2:abcd::1".parse().unwrap(), 2)
                .is_none()
        );
        assert!(table.take("2001:db8:1:3::1".parse().unwrap(), 2).is_some());
        // An IPv4 client seen through a dual-stack socket is its IPv4 address.
        let _c = table.take("::ffff:10.0.0.9".parse().unwrap(), 1).unwrap();
        assert!(table.take("10.0.0.9".parse().unwrap(), 1).is_none());
    }
}
