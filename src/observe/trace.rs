//! Trace export (OpenTelemetry, OTLP over HTTP), behind the `otel` cargo feature and the
//! `--otlp-endpoint` flag. Spans: `request` (every request, with its id), then the
//! stages of a purchase (`gate`, `bus`; target `otel`, so they cost nothing unless
//! exported), and in the worker `store_order`, continued from the `traceparent` header
//! the gateway put on the order's Kafka message (W3C trace context). Without the
//! feature, the functions here do nothing.

/// Target of the spans that exist for traces only (the human and JSON logs leave them
/// out, and so cost nothing when no exporter is on).
pub const TARGET: &str = "otel";

/// The trace exporter could not be built (a bad endpoint).
#[derive(Debug, thiserror::Error)]
#[error("trace exporter: {0}")]
pub struct TraceError(pub String);

#[cfg(feature = "otel")]
mod enabled {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Flushes and stops the exporter when dropped (at the end of `main`).
    pub struct Exporter(SdkTracerProvider);

    impl Drop for Exporter {
        fn drop(&mut self) {
            if let Err(e) = self.0.shutdown() {
                eprintln!("trace exporter did not flush: {e}");
            }
        }
    }

    /// The exporter's layer for the subscriber, and its guard.
    pub fn layer<S>(
        endpoint: &str,
        service: &str,
    ) -> Result<(impl tracing_subscriber::Layer<S>, Exporter), super::TraceError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| super::TraceError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("flashsale");
        Ok((
            tracing_opentelemetry::layer().with_tracer(tracer),
            Exporter(provider),
        ))
    }

    struct One<'a>(&'a mut Option<String>);
    impl Injector for One<'_> {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                *self.0 = Some(value);
            }
        }
    }

    struct Given<'a>(&'a str);
    impl Extractor for Given<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }

    pub fn traceparent() -> Option<String> {
        let context = tracing::Span::current().context();
        let mut value = None;
        TraceContextPropagator::new().inject_context(&context, &mut One(&mut value));
        value
    }

    pub fn continue_from(traceparent: &str, span: &tracing::Span) {
        let parent = TraceContextPropagator::new().extract(&Given(traceparent));
        let _ = span.set_parent(parent);
    }
}

#[cfg(feature = "otel")]
pub use enabled::{Exporter, layer};

/// The current span's W3C `traceparent`, when traces are exported.
pub fn traceparent() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        enabled::traceparent()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes `span` a child of the trace `traceparent` names (another process's span).
pub fn continue_from(traceparent: &str, span: &tracing::Span) {
    #[cfg(feature = "otel")]
    enabled::continue_from(traceparent, span);
    #[cfg(not(feature = "otel"))]
    let _ = (traceparent, span);
}
