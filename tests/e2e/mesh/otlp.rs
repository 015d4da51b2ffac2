//! A real OTLP/gRPC trace receiver for the end-to-end tests, and what it received.
//!
//! [`OtlpReceiver::start`] runs `otlp_receiver.py` (beside this file), a receiver built on the
//! official OpenTelemetry protobuf definitions, and collects the spans it prints (one JSON line
//! each) as [`ExportedSpan`]s. Tests point hush's exporter at [`OtlpReceiver::endpoint`], then
//! [`OtlpReceiver::wait_for`] the spans they expect. The receiver needs a Python with the
//! `opentelemetry-proto` and `grpcio` packages: see [`python`].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The receiver script, unless `HUSH_OTLP_RECEIVER` names another one.
const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/e2e/mesh/otlp_receiver.py"
);

/// How long the receiver may take to start listening (Python imports gRPC slowly on a busy
/// machine).
const STARTUP: Duration = Duration::from_secs(30);

/// The Python that has the receiver's packages: `HUSH_OTLP_PYTHON` (CI sets it to a venv's
/// python), or `None` when it is not set, so the tests that need the receiver can skip.
pub(crate) fn python() -> Option<PathBuf> {
    std::env::var_os("HUSH_OTLP_PYTHON")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// One span as the receiver decoded it.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct ExportedSpan {
    /// Lower-case hex, 32 digits.
    pub(crate) trace_id: String,
    /// Lower-case hex, 16 digits.
    pub(crate) span_id: String,
    /// Lower-case hex, or empty for a root span.
    pub(crate) parent_span_id: String,
    pub(crate) name: String,
    /// The `SpanKind` name: `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, …
    pub(crate) kind: String,
    /// The resource's `service.name`, or empty.
    pub(crate) service: String,
    /// The `StatusCode` name: `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub(crate) status: String,
    pub(crate) status_message: String,
    /// Key → string, integer, float, boolean, or array of those.
    pub(crate) attributes: Map<String, Value>,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
}

impl ExportedSpan {
    /// The attribute `key`, if the span has it.
    pub(crate) fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The attribute `key`, if the span has it as a string.
    pub(crate) fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }
}

/// The running receiver. Dropping it closes the script's stdin and kills it.
pub(crate) struct OtlpReceiver {
    child: Child,
    addr: String,
    shared: Arc<Shared>,
}

/// What the reader threads collect from the script.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Notified whenever `state` changes.
    changed: Condvar,
    /// Everything the script wrote to stderr.
    stderr: Mutex<String>,
}

#[derive(Default)]
struct State {
    spans: Vec<ExportedSpan>,
    /// Stdout lines that were not spans.
    garbage: Vec<String>,
    /// The script's stdout has closed: it has exited.
    closed: bool,
}

impl OtlpReceiver {
    /// Starts the receiver with `python` and waits until it listens.
    pub(crate) fn start(python: &Path) -> OtlpReceiver {
        let script = std::env::var_os("HUSH_OTLP_RECEIVER")
            .map_or_else(|| PathBuf::from(RECEIVER), PathBuf::from);
        let mut child = Command::new(python)
            .arg(&script)
            // Kept open: the script exits when it closes, so it never outlives the test.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "run the OTLP receiver {} with {}: {e}",
                    script.display(),
                    python.display()
                )
            });
        let shared = Arc::new(Shared::default());

        let mut stderr = child.stderr.take().expect("the receiver's stderr");
        let collected = Arc::clone(&shared);
        let stderr_reader = thread::spawn(move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                let text = String::from_utf8_lossy(&chunk[..n]);
                lock(&collected.stderr).push_str(&text);
            }
        });

        let stdout = child.stdout.take().expect("the receiver's stdout");
        let (listening, address) = mpsc::channel();
        let collected = Arc::clone(&shared);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = listening.send(addr.to_owned());
                    continue;
                }
                let mut state = lock(&collected.state);
                match serde_json::from_str(&line) {
                    Ok(span) => state.spans.push(span),
                    Err(e) => state.garbage.push(format!("{line} ({e})")),
                }
                collected.changed.notify_all();
            }
            lock(&collected.state).closed = true;
            collected.changed.notify_all();
        });

        let addr = match address.recv_timeout(STARTUP) {
            Ok(addr) => addr,
            Err(RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                let _ = stderr_reader.join();
                panic!(
                    "the OTLP receiver ({} {}) exited before listening ({status}); stderr:\n{}",
                    python.display(),
                    script.display(),
                    lock(&shared.stderr),
                );
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = stderr_reader.join();
                panic!(
                    "the OTLP receiver ({} {}) did not listen within {STARTUP:?}; stderr:\n{}",
                    python.display(),
                    script.display(),
                    lock(&shared.stderr),
                );
            }
        };
        OtlpReceiver {
            child,
            addr,
            shared,
        }
    }

    /// Where to send traces: `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `done` holds for the spans received so far, and returns them all. Panics,
    /// naming `what` and listing the spans, after `deadline` or if the receiver dies.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        let end = Instant::now() + deadline;
        let mut state = lock(&self.shared.state);
        loop {
            if done(&state.spans) {
                return state.spans.clone();
            }
            let problem = if !state.garbage.is_empty() {
                Some("the receiver printed lines that are not spans".to_owned())
            } else if state.closed {
                Some("the receiver exited".to_owned())
            } else {
                let left = end.saturating_duration_since(Instant::now());
                left.is_zero()
                    .then(|| format!("nothing matched within {deadline:?}"))
            };
            if let Some(problem) = problem {
                let report = self.report(&state);
                drop(state);
                panic!("waiting for {what}: {problem}\n{report}");
            }
            let left = end.saturating_duration_since(Instant::now());
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The spans (and anything else) received so far, for a panic message.
    fn report(&self, state: &State) -> String {
        let mut report = format!("{} span(s) received:\n", state.spans.len());
        for span in &state.spans {
            let parent = if span.parent_span_id.is_empty() {
                "-"
            } else {
                &span.parent_span_id
            };
            report += &format!(
                "  {:?} ({}) service={:?} trace={} span={} parent={parent}\n",
                span.name, span.kind, span.service, span.trace_id, span.span_id,
            );
        }
        for line in &state.garbage {
            report += &format!("  not a span: {line}\n");
        }
        let stderr = lock(&self.shared.stderr);
        if !stderr.is_empty() {
            report += &format!("receiver stderr:\n{stderr}");
        }
        report
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Locks `mutex`, even if a panicking thread held it (the data stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
