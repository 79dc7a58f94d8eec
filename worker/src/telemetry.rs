//! Logging: human-readable text by default, JSON lines when `log.format = "json"`.
//!
//! Built with the `otel` feature, spans (each job's carries its id, release, platform and
//! attempt) are also exported over OTLP/HTTP when `ATR_DIST_OTLP_ENDPOINT` is set, e.g.
//! `http://127.0.0.1:4318/v1/traces`; `shutdown` flushes them before the process exits.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests, embedded use) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => install(builder.finish()),
        LogFormat::Json => install(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    };
}

/// Standard error with every configured secret taken out (`secret::scrub`). Platform
/// answers are scrubbed where they are read; this is the net under every other way a secret
/// could reach a log line. The fmt layer formats an event whole and writes it in one call, so
/// a secret is never split between two writes.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(crate::secret::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn install<S>(subscriber: S) -> Result<(), TryInitError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    #[cfg(feature = "otel")]
    if let Some(layer) = otel::layer() {
        use tracing_subscriber::layer::SubscriberExt;
        return subscriber.with(layer).try_init();
    }
    subscriber.try_init()
}

/// Flushes exported spans, if any; call before the process exits.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    otel::shutdown();
}

#[cfg(feature = "otel")]
mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Subscriber;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    pub const ENDPOINT_VAR: &str = "ATR_DIST_OTLP_ENDPOINT";

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The OpenTelemetry layer, when an endpoint is configured. A bad endpoint is reported
    /// and tracing goes on without export: losing traces must not stop the worker.
    pub fn layer<S>() -> Option<impl Layer<S>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let endpoint = std::env::var(ENDPOINT_VAR)
            .ok()
            .filter(|e| !e.trim().is_empty())?;
        let exporter = match SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("atr-dist: {ENDPOINT_VAR}={endpoint}: cannot export traces there: {e}");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("atr-dist").build())
            .build();
        let tracer = provider.tracer("atr-dist");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    pub fn shutdown() {
        if let Some(provider) = PROVIDER.get()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("atr-dist: flushing traces failed: {e}");
        }
    }
}
