//! Logs and traces: readable or JSON log lines on stderr, with a filter that can be changed
//! while the process runs, and, when an OTLP endpoint is configured, spans exported over
//! OTLP/gRPC.
//!
//! The two outputs have separate filters. Logs follow `--log-level` / `RUST_LOG` and never show
//! spans; traces take hush's own spans (and the events inside them), whatever the log level.
//! With no endpoint there is no exporter and no trace layer at all: hush's span call sites are
//! then disabled and cost one cached-interest check each.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Layer, Registry, fmt, reload};

/// The standard environment variables, read in this order of precedence after the
/// `--otlp-endpoint` flag and before a configuration file's key.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long exiting waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Readable text.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where spans go, once resolved from the flag, the environment and the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceExport {
    /// The collector's OTLP/gRPC address, `http://host:4317`.
    pub(crate) endpoint: String,
    /// Which setting named it, for messages.
    pub(crate) source: &'static str,
    /// `service.name`; `None` leaves it to `OTEL_SERVICE_NAME`.
    pub(crate) service_name: Option<String>,
}

impl TraceExport {
    /// Resolves the export settings: the `--otlp-endpoint` flag, then
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`, then the
    /// configuration file's `tracing.otlp_endpoint`. `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn exporting off. The service name is
    /// `OTEL_SERVICE_NAME`, else the configuration's, else `default_service`.
    pub(crate) fn resolve(
        flag: Option<&str>,
        config: Option<&hush_proxy::TracingConfig>,
        default_service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let from_env = ENDPOINT_VARIABLES
            .iter()
            .find_map(|name| set(name).map(|value| (value, *name)));
        let found = flag
            .filter(|f| !f.trim().is_empty())
            .map(|f| (f.to_string(), "--otlp-endpoint"))
            .or(from_env)
            .or_else(|| {
                config
                    .and_then(|c| c.otlp_endpoint.clone())
                    .map(|e| (e, "tracing.otlp_endpoint"))
            });
        let Some((endpoint, source)) = found else {
            return Ok(None);
        };
        let endpoint = endpoint.trim().to_string();
        check_endpoint(&endpoint).with_context(|| format!("{source} is `{endpoint}`"))?;
        let service_name = if set("OTEL_SERVICE_NAME").is_some() {
            None
        } else {
            Some(
                config
                    .and_then(|c| c.service_name.clone())
                    .unwrap_or_else(|| default_service.to_string()),
            )
        };
        Ok(Some(Self {
            endpoint,
            source,
            service_name,
        }))
    }
}

/// An OTLP/gRPC endpoint is an `http://` URL with a host. Spans go to the collector in
/// plaintext: the usual collector is an agent on the node or in the pod; one further away is
/// reached through it.
fn check_endpoint(endpoint: &str) -> Result<()> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        anyhow::anyhow!("not a URL ({e}); expected e.g. http://otel-collector:4317")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "hush sends spans over plaintext OTLP/gRPC; point it at a collector agent on the \
             node or in the pod (http://…:4317), which can forward them over TLS"
        ),
        _ => bail!("an OTLP/gRPC endpoint starts with http://, e.g. http://otel-collector:4317"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("the URL names no host");
    }
    Ok(())
}

/// Logging and tracing as set up at start; [`Telemetry::shutdown`] flushes the last spans.
pub(crate) struct Telemetry {
    /// The log filter in force, replaceable at run time.
    pub(crate) logs: Arc<ReloadableFilter>,
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. With `export`, this must run inside the Tokio runtime
    /// the process keeps: the gRPC channel to the collector lives on it.
    pub(crate) fn init(
        level: &str,
        format: LogFormat,
        export: Option<&TraceExport>,
    ) -> Result<Self> {
        let wanted = std::env::var("RUST_LOG")
            .ok()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| level.to_string());
        let (initial, filter) = match EnvFilter::try_new(&wanted) {
            Ok(filter) => (wanted, filter),
            Err(_) => ("info".to_string(), EnvFilter::new("info")),
        };
        let (filter, handle) = reload::Layer::new(filter);
        let log_layer = log_layer(filter, format);
        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log_layer];
        let traces = match export {
            Some(export) => {
                let provider = tracer_provider(export)?;
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer("hush"))
                        .with_location(false)
                        .with_threads(false)
                        .with_level(false)
                        .with_target(false)
                        .with_tracked_inactivity(false)
                        // A request without `traceparent` starts a trace of its own; with
                        // activation, it would become a child of whatever span is entered
                        // around it, and the requests of one kept-alive connection could
                        // pile into one long trace.
                        .with_context_activation(false)
                        .with_filter(
                            // hush's spans are INFO: the hint keeps every DEBUG and TRACE call
                            // site of the libraries below (h2, hyper, rustls) switched off.
                            filter_fn(traced).with_max_level_hint(LevelFilter::INFO),
                        )
                        .boxed(),
                );
                Some(provider)
            }
            None => None,
        };
        tracing_subscriber::registry().with(layers).init();
        Ok(Self {
            logs: Arc::new(ReloadableFilter {
                handle,
                current: Mutex::new(initial),
            }),
            traces,
        })
    }

    /// Sends the spans still buffered (bounded by [`FLUSH_TIMEOUT`]). The exporter's thread
    /// needs the runtime free to drive its gRPC channel, hence the blocking task.
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.traces else { return };
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("could not send the last spans to the collector: {e}");
        }
    }
}

/// The log formatter on stderr, filtered by `filter` (replaceable) and shown events only.
fn log_layer(
    filter: reload::Layer<EnvFilter, Registry>,
    format: LogFormat,
) -> Box<dyn Layer<Registry> + Send + Sync> {
    // Spans are for the trace exporter: in log lines their fields would repeat on every line,
    // and a disabled span costs nothing. The level hint (none of its own) leaves the log
    // filter's in charge: without it, the combined filter would have no hint, and every
    // TRACE call site of h2 and hyper would be checked on every frame instead of being ruled
    // out by the global maximum level.
    let events_only =
        filter_fn(|metadata| metadata.is_event()).with_max_level_hint(LevelFilter::TRACE);
    let log_filter = filter.and(events_only);
    match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_target(true)
            .with_filter(log_filter)
            .boxed(),
    }
}

/// What the trace exporter takes: hush's spans, and the events at INFO and above inside them
/// (they become span events: refusals, access lines).
fn traced(metadata: &Metadata<'_>) -> bool {
    if metadata.is_span() {
        metadata.target().starts_with("hush")
    } else {
        *metadata.level() <= Level::INFO
    }
}

fn tracer_provider(export: &TraceExport) -> Result<SdkTracerProvider> {
    let otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&export.endpoint)
        .build()
        .with_context(|| {
            format!(
                "cannot set up the OTLP exporter to {} ({})",
                export.endpoint, export.source
            )
        })?;
    let exporter = Reported {
        inner: otlp,
        endpoint: export.endpoint.clone(),
        failing: AtomicBool::new(false),
    };
    // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = Resource::builder();
    if let Some(name) = &export.service_name {
        resource = resource.with_service_name(name.clone());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The OTLP exporter, saying once when spans stop reaching the collector and once when they
/// reach it again. (The SDK's own diagnostics are compiled out; without this, a wrong endpoint
/// would go unnoticed.)
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            match (&result, ExportHealth::after(&self.failing, result.is_ok())) {
                (Err(e), ExportHealth::Broke) => tracing::warn!(
                    endpoint = %self.endpoint,
                    "cannot send spans to the collector at {}: {e}; {spans} spans dropped, \
                     and later batches too until it answers (this is said once)",
                    self.endpoint
                ),
                (_, ExportHealth::Recovered) => tracing::info!(
                    endpoint = %self.endpoint,
                    "spans reach the collector at {} again",
                    self.endpoint
                ),
                _ => {}
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// What an export's outcome changed.
#[derive(Debug, PartialEq, Eq)]
enum ExportHealth {
    /// The first failure after successes (or at start).
    Broke,
    /// The first success after failures.
    Recovered,
    /// As before.
    Unchanged,
}

impl ExportHealth {
    fn after(failing: &AtomicBool, ok: bool) -> Self {
        match (failing.swap(!ok, Ordering::Relaxed), ok) {
            (false, false) => Self::Broke,
            (true, true) => Self::Recovered,
            _ => Self::Unchanged,
        }
    }
}

/// The log filter in force, replaceable at run time (the sidecar's admin port offers that).
pub(crate) struct ReloadableFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl hush_proxy::LogControl for ReloadableFilter {
    fn filter(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_filter(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = filter.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn config(endpoint: Option<&str>, service: Option<&str>) -> hush_proxy::TracingConfig {
        hush_proxy::TracingConfig {
            otlp_endpoint: endpoint.map(String::from),
            service_name: service.map(String::from),
        }
    }

    #[test]
    fn the_log_filter_keeps_its_level_hint() {
        // Without a hint, the global maximum level would be TRACE and every disabled TRACE
        // call site in h2 and hyper would be checked one by one.
        for format in [LogFormat::Text, LogFormat::Json] {
            let (filter, _handle) = reload::Layer::new(EnvFilter::new("info"));
            assert_eq!(
                log_layer(filter, format).max_level_hint(),
                Some(LevelFilter::INFO)
            );
        }
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(
            TraceExport::resolve(None, None, "hush-ca", env(&[])).unwrap(),
            None
        );
        let empty = config(None, Some("frontend"));
        assert_eq!(
            TraceExport::resolve(Some(""), Some(&empty), "hush-proxy", env(&[])).unwrap(),
            None
        );
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_file() {
        let file = config(Some("http://file:4317"), Some("frontend-sidecar"));
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        let pick = |flag, vars: &[(&str, &str)]| {
            TraceExport::resolve(flag, Some(&file), "hush-proxy", env(vars))
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            pick(Some("http://flag:4317"), &vars).endpoint,
            "http://flag:4317"
        );
        assert_eq!(pick(None, &vars).endpoint, "http://traces:4317");
        assert_eq!(pick(None, &vars[..1]).endpoint, "http://general:4317");
        let from_file = pick(None, &[]);
        assert_eq!(from_file.endpoint, "http://file:4317");
        assert_eq!(from_file.source, "tracing.otlp_endpoint");
        assert_eq!(from_file.service_name.as_deref(), Some("frontend-sidecar"));
    }

    #[test]
    fn the_service_name_comes_from_the_environment_first() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SERVICE_NAME", "shop-frontend"),
        ];
        let export = TraceExport::resolve(None, None, "hush-ca", env(&vars))
            .unwrap()
            .unwrap();
        // Left to the SDK, which reads OTEL_SERVICE_NAME itself.
        assert_eq!(export.service_name, None);
        let export = TraceExport::resolve(None, None, "hush-ca", env(&vars[..1]))
            .unwrap()
            .unwrap();
        assert_eq!(export.service_name.as_deref(), Some("hush-ca"));
    }

    #[test]
    fn exporting_can_be_switched_off_by_the_standard_variables() {
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), off];
            assert_eq!(
                TraceExport::resolve(Some("http://flag:4317"), None, "hush", env(&vars)).unwrap(),
                None
            );
        }
    }

    #[test]
    fn a_failing_collector_is_reported_once_and_its_return_once() {
        let failing = AtomicBool::new(false);
        let outcomes: Vec<ExportHealth> = [true, false, false, false, true, true, false]
            .into_iter()
            .map(|ok| ExportHealth::after(&failing, ok))
            .collect();
        use ExportHealth::*;
        assert_eq!(
            outcomes,
            [
                Unchanged, Broke, Unchanged, Unchanged, Recovered, Unchanged, Broke
            ]
        );
    }

    #[test]
    fn a_bad_endpoint_is_named_with_its_source() {
        for (bad, expected) in [
            ("otel-collector:4317", "starts with http://"),
            ("ftp://c:4317", "starts with http://"),
            ("https://c:4317", "plaintext OTLP/gRPC"),
            ("http://", "not a URL"),
            ("http://a b", "not a URL"),
        ] {
            let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", bad)];
            let error = TraceExport::resolve(None, None, "hush", env(&vars)).unwrap_err();
            let text = format!("{error:#}");
            assert!(text.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{text}");
            assert!(text.contains(expected), "{bad}: {text}");
        }
    }
}
