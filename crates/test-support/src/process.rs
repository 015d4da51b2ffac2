//! Running the `hush` binary: one-shot commands and long-running servers.
//!
//! Tests pass the binary's path in (`env!("CARGO_BIN_EXE_hush")`, which only the test crate
//! knows). A server is ready when it prints its readiness line; the harness waits for that line
//! with a bounded timeout instead of sleeping, and kills the process when dropped so that a
//! failing test never leaves a CA listening.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hush_config::{CaConfig, ProxyConfig};

/// How long a server may take to print its readiness line. Generous: the CI machine may be
/// compiling something else at the same time.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Environment variables that would change what hush does behind the test's back.
const SCRUBBED_ENV: [&str; 3] = ["HUSH_CA_DIR", "RUST_LOG", "HUSH_LOG"];

fn command(bin: &Path, args: &[impl AsRef<OsStr>]) -> Command {
    let mut command = Command::new(bin);
    command.args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command
}

/// Runs `hush` with `args` to completion and returns what it printed.
pub fn run_hush(bin: impl AsRef<Path>, args: &[impl AsRef<OsStr>]) -> Output {
    let bin = bin.as_ref();
    command(bin, args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs `hush` with `args` and extra environment variables (`SOFTHSM2_CONF`, say) to
/// completion and returns what it printed.
pub fn run_hush_with_env(
    bin: impl AsRef<Path>,
    args: &[impl AsRef<OsStr>],
    env: &[(&str, &str)],
) -> Output {
    let bin = bin.as_ref();
    command(bin, args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs `hush` with `args`, panicking with its output unless it succeeds; returns stdout.
pub fn run_hush_ok(bin: impl AsRef<Path>, args: &[impl AsRef<OsStr>]) -> String {
    let output = run_hush(bin, args);
    assert!(
        output.status.success(),
        "hush {} failed:\n{}",
        join_args(args),
        describe_output(&output)
    );
    String::from_utf8(output.stdout).expect("hush printed non-UTF-8 on stdout")
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn describe_output(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Mints a join token with `hush ca token create` and returns it (the last line of stdout).
pub fn mint_token(
    bin: impl AsRef<Path>,
    ca_dir: &Path,
    spiffe_id: &str,
    extra_args: &[&str],
) -> String {
    let mut args: Vec<&OsStr> = vec![
        "ca".as_ref(),
        "token".as_ref(),
        "create".as_ref(),
        "--dir".as_ref(),
        ca_dir.as_os_str(),
        "--spiffe-id".as_ref(),
        spiffe_id.as_ref(),
    ];
    args.extend(extra_args.iter().map(|a| OsStr::new(*a)));
    let stdout = run_hush_ok(bin, &args);
    stdout
        .lines()
        .last()
        .expect("hush ca token create printed no token")
        .trim()
        .to_string()
}

/// Writes `DIR/sidecar.yaml` for `hush proxy`: a CA section pointing at `ca_url` with the
/// bundle of `ca_dir` and a fresh single-use join token for `identity` (in `DIR/token`, named
/// relative to the file, as the sidecar resolves it), an admin listener on a free port, and
/// whatever `configure` sets on top (the listeners, limits…).
pub fn write_sidecar_config(
    bin: impl AsRef<Path>,
    dir: &Path,
    ca_dir: &Path,
    ca_url: &str,
    identity: &str,
    configure: impl FnOnce(&mut ProxyConfig),
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let token = mint_token(bin, ca_dir, identity, &[]);
    std::fs::write(dir.join("token"), format!("{token}\n")).expect("write the token");
    let mut config = ProxyConfig::new(CaConfig::new(ca_url, ca_dir.join("bundle.pem"), "token"));
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    configure(&mut config);
    let path = dir.join("sidecar.yaml");
    write_config(&path, &config);
    path
}

/// Writes `config` to `path` as the YAML `hush proxy --config` reads.
pub fn write_config(path: &Path, config: &ProxyConfig) {
    let yaml = config
        .to_yaml()
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    std::fs::write(path, yaml).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn join_args(args: &[impl AsRef<OsStr>]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running `hush` process whose stdout lines and stderr are captured.
#[derive(Debug)]
pub struct HushProcess {
    child: Child,
    description: String,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

// === impl HushProcess ===

impl HushProcess {
    /// Starts `hush` with `args`.
    pub fn spawn(bin: impl AsRef<Path>, args: &[impl AsRef<OsStr>]) -> Self {
        Self::spawn_with_env(bin, args, &[])
    }

    /// Starts `hush` with `args` and extra environment variables (such as `HUSH_LOG`).
    pub fn spawn_with_env(
        bin: impl AsRef<Path>,
        args: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
    ) -> Self {
        let bin = bin.as_ref();
        let description = format!("hush {}", join_args(args));
        let mut command = command(bin, args);
        command.envs(env.iter().copied());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = stderr.clone();
        let readers = vec![
            std::thread::spawn(move || forward_lines(stdout, &tx)),
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                    lock(&stderr_sink).push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }),
        ];
        Self {
            child,
            description,
            lines,
            stdout: Vec::new(),
            stderr,
            readers,
            exit: None,
        }
    }

    /// Whether the process has not exited (a restarted process would be another one).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded by [`READY_TIMEOUT`]) for the line starting with `prefix` that says the
    /// process is ready; if it exits or stays silent, what it printed.
    pub fn wait_until_ready(&mut self, prefix: &str) -> Result<String, StartError> {
        self.wait_for_line(|l| l.starts_with(prefix), READY_TIMEOUT)
            .map_err(|message| StartError {
                status: self.wait_exit(Duration::ZERO),
                message,
                stderr: self.stderr(),
            })
    }

    /// Waits up to `timeout` for a stdout line that satisfies `wanted` and returns it. Fails,
    /// with everything the process printed, if the process closes stdout (usually: it exited)
    /// or the time runs out.
    pub fn wait_for_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure(&format!("no expected line within {timeout:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_TIMEOUT);
                    return Err(self.failure(&format!(
                        "it closed stdout before printing the expected line (exit: {status:?})"
                    )));
                }
            }
        }
    }

    /// Every stdout line received so far.
    pub fn stdout_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push(line);
        }
        &self.stdout
    }

    /// What the process wrote on stderr so far (all of it once the process has exited).
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        self.send_sigterm();
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                panic!(
                    "{}",
                    self.failure(&format!(
                        "it did not exit within {EXIT_TIMEOUT:?} of SIGTERM"
                    ))
                )
            }
        }
    }

    /// Sends SIGTERM (with the `kill` command) and returns at once.
    pub fn send_sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(kill.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running.
    /// Once it has exited, its stdout and stderr have been read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let deadline = Instant::now() + timeout;
            loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        self.exit = Some(status);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        // Polling the exit status is the bounded readiness check here.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) | Err(_) => return None,
                }
            }
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        self.exit
    }

    fn failure(&mut self, what: &str) -> String {
        let stdout = self.stdout_lines().join("\n");
        format!(
            "{}: {what}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            self.description,
            self.stderr()
        )
    }
}

impl Drop for HushProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines(stdout: ChildStdout, tx: &mpsc::Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        if tx.send(line).is_err() {
            return;
        }
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `hush ca serve` did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// How the process ended, if it did.
    pub status: Option<ExitStatus>,
    /// What went wrong, with everything the process printed.
    pub message: String,
    /// The process's stderr.
    pub stderr: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A running `hush ca serve`, ready to answer.
#[derive(Debug)]
pub struct CaProcess {
    process: HushProcess,
    url: String,
    trust_domain: String,
    dir: PathBuf,
    metrics: Option<SocketAddr>,
}

// === impl CaProcess ===

impl CaProcess {
    /// The line `hush ca serve` prints once it accepts connections.
    pub const READY_PREFIX: &'static str = "hush ca: serving hush.ca.v1 and istio.v1.auth on ";

    /// The line `hush ca serve --metrics-listen` prints, before the readiness line, with the
    /// address it listens on for Prometheus.
    pub const METRICS_PREFIX: &'static str = "hush ca: metrics on ";

    /// Runs `hush ca serve --dir DIR --listen 127.0.0.1:0 EXTRA…` and waits until it is ready.
    /// Panics with the process's output if it is not.
    pub fn start(bin: impl AsRef<Path>, dir: &Path, extra_args: &[&str]) -> Self {
        Self::try_start_with_env(bin, dir, extra_args, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `hush ca serve --dir DIR --listen LISTEN EXTRA…` on a given address (to restart a
    /// CA where its clients expect it) and waits until it is ready.
    pub fn start_on(bin: impl AsRef<Path>, dir: &Path, listen: &str, extra_args: &[&str]) -> Self {
        Self::try_start_on(bin, dir, listen, extra_args, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start`], with extra environment variables, returning an error instead of
    /// panicking when the CA exits or stays silent.
    pub fn try_start_with_env(
        bin: impl AsRef<Path>,
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, StartError> {
        Self::try_start_on(bin, dir, "127.0.0.1:0", extra_args, env)
    }

    fn try_start_on(
        bin: impl AsRef<Path>,
        dir: &Path,
        listen: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, StartError> {
        let mut args: Vec<&OsStr> = vec![
            "ca".as_ref(),
            "serve".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
        ];
        args.extend(extra_args.iter().map(|a| OsStr::new(*a)));
        let mut process = HushProcess::spawn_with_env(bin, &args, env);
        let line = process.wait_until_ready(Self::READY_PREFIX)?;
        let (url, trust_domain) = parse_ready_line(&line).unwrap_or_else(|| {
            panic!("cannot read the URL and trust domain from the readiness line {line:?}")
        });
        let metrics = process
            .stdout_lines()
            .iter()
            .find_map(|l| parse_metrics_line(l));
        Ok(Self {
            process,
            url,
            trust_domain,
            dir: dir.to_path_buf(),
            metrics,
        })
    }

    /// The CA's address, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address of the metrics server (`--metrics-listen`), as the CA printed it.
    pub fn metrics(&self) -> SocketAddr {
        self.metrics
            .expect("this CA serves no metrics: start it with --metrics-listen 127.0.0.1:0")
    }

    /// `GET /metrics` on the metrics server: the Prometheus text.
    pub fn scrape(&self) -> String {
        let (status, body) = http_request(self.metrics(), "GET", "/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// The trust domain named on the readiness line.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA directory it serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Stops the CA with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// The underlying process.
    pub fn process(&mut self) -> &mut HushProcess {
        &mut self.process
    }
}

/// A running `hush proxy`, ready: it holds its certificate and accepts connections.
#[derive(Debug)]
pub struct ProxyProcess {
    process: HushProcess,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    outbound: Vec<SocketAddr>,
    spiffe_id: String,
}

// === impl ProxyProcess ===

impl ProxyProcess {
    /// The line `hush proxy` prints once it holds a certificate.
    pub const READY_PREFIX: &'static str = "hush proxy: ready as ";

    /// Runs `hush proxy --config CONFIG` and waits until it is ready. Panics with the
    /// process's output if it is not.
    pub fn start(bin: impl AsRef<Path>, config: &Path) -> Self {
        Self::try_start(bin, config, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start`], with extra environment variables, returning an error instead of
    /// panicking.
    pub fn try_start(
        bin: impl AsRef<Path>,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self, StartError> {
        let args: [&OsStr; 3] = ["proxy".as_ref(), "--config".as_ref(), config.as_os_str()];
        Self::spawn_and_wait(HushProcess::spawn_with_env(bin, &args, env))
    }

    /// Runs `WRAPPER… BIN proxy --config CONFIG`, e.g. inside a network namespace as another
    /// user (`ip netns exec NS setpriv --reuid 1337 …`), and waits until it is ready. The
    /// addresses it reports are those of wherever it runs.
    pub fn start_wrapped(wrapper: &[&str], bin: impl AsRef<Path>, config: &Path) -> Self {
        let (program, prefix) = wrapper.split_first().expect("a wrapper command");
        let mut args: Vec<&OsStr> = prefix.iter().map(OsStr::new).collect();
        args.extend([
            bin.as_ref().as_os_str(),
            "proxy".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ]);
        Self::spawn_and_wait(HushProcess::spawn(program, &args)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn_and_wait(mut process: HushProcess) -> Result<Self, StartError> {
        let ready = process.wait_until_ready(Self::READY_PREFIX)?;
        let spiffe_id = ready
            .strip_prefix(Self::READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        let mut admin = None;
        let mut inbound = None;
        let mut outbound = Vec::new();
        for line in process.stdout_lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(kind), Some(addr)) = (words.get(2), words.get(3)) else {
                continue;
            };
            let Ok(addr) = addr.trim_start_matches("http://").parse::<SocketAddr>() else {
                continue;
            };
            match *kind {
                "admin" => admin = Some(addr),
                "inbound" => inbound = Some(addr),
                "outbound" => outbound.push(addr),
                _ => {}
            }
        }
        let admin = admin.unwrap_or_else(|| {
            panic!(
                "hush proxy printed no admin address:\n{}",
                process.stdout_lines().join("\n")
            )
        });
        Ok(Self {
            process,
            admin,
            inbound,
            outbound,
            spiffe_id,
        })
    }

    /// The admin server's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The inbound (mTLS) listener's address.
    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("this proxy has no inbound listener")
    }

    /// The address of the `index`th outbound listener.
    pub fn outbound(&self, index: usize) -> SocketAddr {
        *self
            .outbound
            .get(index)
            .unwrap_or_else(|| panic!("this proxy has no outbound listener {index}"))
    }

    /// The SPIFFE ID on the readiness line.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// What the proxy logged so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits (bounded) until the proxy has logged a line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return Ok(line.to_string());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the proxy never logged a line with {needles:?}; stderr:\n{stderr}"
                ));
            }
            // Polling captured output is the bounded readiness check here.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// The underlying process.
    pub fn process(&mut self) -> &mut HushProcess {
        &mut self.process
    }
}

/// A running `hush gateway`, ready (it holds its mesh identity and accepts connections).
#[derive(Debug)]
pub struct GatewayProcess {
    process: HushProcess,
    admin: SocketAddr,
    https: SocketAddr,
    http: Option<SocketAddr>,
    spiffe_id: String,
}

impl GatewayProcess {
    /// The line `hush gateway` prints once it holds its mesh identity.
    pub const READY_PREFIX: &'static str = "hush gateway: ready as ";

    /// Runs `hush gateway --config CONFIG` with extra environment variables and waits until
    /// it is ready.
    pub fn try_start(
        bin: impl AsRef<Path>,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self, StartError> {
        let args: [&OsStr; 3] = ["gateway".as_ref(), "--config".as_ref(), config.as_os_str()];
        let mut process = HushProcess::spawn_with_env(bin, &args, env);
        let ready = process.wait_until_ready(Self::READY_PREFIX)?;
        let spiffe_id = ready
            .strip_prefix(Self::READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        let (mut admin, mut https, mut http) = (None, None, None);
        for line in process.stdout_lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(kind), Some(addr)) = (words.get(2), words.get(3)) else {
                continue;
            };
            let Ok(addr) = addr.trim_start_matches("http://").parse::<SocketAddr>() else {
                continue;
            };
            match *kind {
                "admin" => admin = Some(addr),
                "https" => https = Some(addr),
                "http" => http = Some(addr),
                _ => {}
            }
        }
        let lines = process.stdout_lines().join("\n");
        Ok(Self {
            admin: admin
                .unwrap_or_else(|| panic!("hush gateway printed no admin address:\n{lines}")),
            https: https
                .unwrap_or_else(|| panic!("hush gateway printed no https address:\n{lines}")),
            http,
            process,
            spiffe_id,
        })
    }

    /// The admin server's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The public TLS listener's address.
    pub fn https(&self) -> SocketAddr {
        self.https
    }

    /// The plaintext redirector's address.
    pub fn http(&self) -> SocketAddr {
        self.http.expect("this gateway has no http listener")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The gateway's mesh identity, from its readiness line.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// What the gateway logged so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }
}

/// A blocking HTTP/1.1 GET (or any method) to a plaintext server such as the admin port;
/// returns the status code and the body. For test assertions only: it reads until the server
/// closes (`connection: close`).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("cannot write to {addr}: {e}"));
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("cannot read from {addr}: {e}"));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `…on https://127.0.0.1:PORT (trust domain TD)` → (URL, TD).
fn parse_ready_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix(CaProcess::READY_PREFIX)?;
    let (url, rest) = rest.split_once(' ')?;
    let trust_domain = rest
        .strip_prefix("(trust domain ")?
        .strip_suffix(')')?
        .to_string();
    url.starts_with("https://")
        .then(|| (url.to_string(), trust_domain))
}

/// `hush ca: metrics on http://127.0.0.1:PORT/metrics` → the address.
fn parse_metrics_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(CaProcess::METRICS_PREFIX)?
        .strip_prefix("http://")?
        .strip_suffix("/metrics")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_readiness_line() {
        let line = "hush ca: serving hush.ca.v1 and istio.v1.auth on https://127.0.0.1:4242 (trust domain e2e.test)";
        assert_eq!(
            parse_ready_line(line),
            Some(("https://127.0.0.1:4242".into(), "e2e.test".into()))
        );
        assert_eq!(parse_ready_line("hush ca: something else"), None);
    }

    #[test]
    fn reads_the_metrics_line() {
        assert_eq!(
            parse_metrics_line("hush ca: metrics on http://127.0.0.1:4243/metrics"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4243)))
        );
        assert_eq!(parse_metrics_line("hush ca: metrics on nowhere"), None);
    }
}
