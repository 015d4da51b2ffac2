//! Prometheus's own lint of an exposition (`promtool check metrics`), shared by the sidecar's
//! and the CA's metrics tests.

use std::path::Path;
use std::process::{Command, Stdio};

use hush_test_support::describe_output;

/// `promtool`: `HUSH_PROMTOOL` (it must then run, as in CI), then the PATH.
pub(crate) fn promtool() -> Option<String> {
    let required = std::env::var("HUSH_PROMTOOL").ok();
    let candidate = required.clone().unwrap_or_else(|| "promtool".to_string());
    let found = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || required.is_none(),
        "HUSH_PROMTOOL={candidate} does not run"
    );
    if !found {
        eprintln!(
            "SKIPPED the metrics lint: promtool is not installed (`bash .ci/run` fetches it)"
        );
    }
    found.then_some(candidate)
}

/// Asserts that `promtool check metrics` finds nothing wrong with `text` (written to a file
/// under `dir`); says it was skipped when promtool is not there.
#[track_caller]
pub(crate) fn assert_promtool_accepts(text: &str, dir: &Path) {
    let Some(promtool) = promtool() else { return };
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).expect("write the scrape");
    let output = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("the scrape"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check metrics found problems:\n{}\n{text}",
        describe_output(&output)
    );
}
