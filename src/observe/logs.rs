//! Logs: human-readable by default, JSON lines with `--log-format json` (one object per
//! event, with the fields of its spans), and a request id on every request: taken from
//! `X-Request-Id` when the client (or a proxy) sends a sane one, else generated, echoed
//! in the answer, and carried by a `request` span so that every log line of the request
//! names it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::http::{HeaderName, HeaderValue, Request};
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one colored line per event.
    #[default]
    Human,
    /// For log pipelines: one JSON object per line.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("--otlp-endpoint needs a build with the `otel` feature")]
    NoTraceExport,
    #[error(transparent)]
    Trace(#[from] super::trace::TraceError),
}

/// What keeps the trace exporter running: flushed when dropped (end of `main`).
pub struct LogGuard {
    #[cfg(feature = "otel")]
    _exporter: Option<super::trace::Exporter>,
}

/// Installs the process's subscriber: log lines to stderr (`RUST_LOG` filters, default
/// `flashsale=info,warn`), and, with `otlp_endpoint` (feature `otel`), spans exported
/// as `service` (the request and stage spans, whatever `RUST_LOG` says).
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> Result<LogGuard, LogError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "flashsale=info,warn".into());
    let lines = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines);
    #[cfg(feature = "otel")]
    {
        let Some(endpoint) = otlp_endpoint else {
            registry.init();
            return Ok(LogGuard { _exporter: None });
        };
        let (layer, exporter) = super::trace::layer(endpoint, service)?;
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target("flashsale", tracing::Level::INFO)
            .with_target(super::trace::TARGET, tracing::Level::INFO);
        registry.with(layer.with_filter(spans)).init();
        Ok(LogGuard {
            _exporter: Some(exporter),
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        if otlp_endpoint.is_some() {
            return Err(LogError::NoTraceExport);
        }
        registry.init();
        Ok(LogGuard {})
    }
}

/// The request's id, in its extensions (handlers may log it or pass it on).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// An id sent by the client is kept if it is 1 to 128 visible ASCII characters.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// `<process prefix>-<counter>`: unique per process run, cheaper than a random UUID.
fn generate() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix}-{n:x}")).expect("hex is a header value")
}

#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;
    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId { inner }
    }
}

#[derive(Clone)]
pub struct WithRequestId<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for WithRequestId<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<Echo<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(given) if acceptable(given) => given.clone(),
            _ => generate(),
        };
        let span = tracing::info_span!(
            "request",
            request_id = %String::from_utf8_lossy(id.as_bytes()),
            method = %request.method(),
            path = %request.uri().path(),
        );
        // A caller in a trace of its own (W3C `traceparent`) gets this request in it.
        if let Some(parent) = request.headers().get("traceparent")
            && let Ok(parent) = parent.to_str()
        {
            super::trace::continue_from(parent, &span);
        }
        request.extensions_mut().insert(RequestId(id.clone()));
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Echo {
            inner,
            id: Some(id),
        }
        .instrument(span)
    }
}

pin_project_lite::pin_project! {
    /// Puts the request id on the answer.
    pub struct Echo<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, E> std::future::Future for Echo<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut answer = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut answer, this.id.take()) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_clients_are_kept_only_when_sane() {
        assert!(acceptable(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("has space")));
        assert!(!acceptable(
            &HeaderValue::try_from("x".repeat(129)).unwrap()
        ));
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(acceptable(&a));
    }
}
