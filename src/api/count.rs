//! The route layer that counts every answer (`crate::observe::metrics`): by route (the
//! router's pattern, not the path: ids do not make new series), method and status, and
//! for purchases their outcome (the problem's code the answer carries, or `accepted`)
//! and how long they took from the request head's arrival.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::Response;

use super::ProblemCode;
use crate::observe::metrics::{purchase_answered, request_answered};
use crate::protect::Arrival;

/// The route whose answers are purchase outcomes.
pub const PURCHASE_ROUTE: &str = "/api/sales/{id}/purchase";

#[derive(Clone, Copy, Default)]
pub struct CountRequestsLayer;

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;
    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests { inner }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for CountRequests<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        // A purchase is timed from its head's arrival (queueing included).
        let started = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.at);
        Counted {
            inner: self.inner.call(request),
            route,
            method,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Counted<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        method: Method,
        started: Instant,
    }
}

impl<F, E> std::future::Future for Counted<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("unmatched", |r| r.as_str());
            let status = response.status().as_u16();
            request_answered(route, this.method, status);
            if route == PURCHASE_ROUTE {
                let outcome = match response.extensions().get::<ProblemCode>() {
                    Some(code) => code.0,
                    None if status == 202 => "accepted",
                    None => "other",
                };
                purchase_answered(outcome, this.started.elapsed());
            }
        }
        Poll::Ready(answer)
    }
}
