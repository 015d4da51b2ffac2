//! Apps written by others, behind a sidecar, that report every request they parsed: the
//! judges of whether a forged identity header reached an app.
//!
//! * Python's `http.server` — a lenient parser: bare LF line endings, leading spaces, any
//!   whitespace between the parts of the request line, lower-case methods.
//! * Node's `http` (llhttp), when `node` is installed.
//! * Node's `http2` (nghttp2) and `http` on one port: HTTP/2 with prior knowledge for
//!   connections that start with the HTTP/2 preface, HTTP/1.1 for the others, as the backend
//!   sidecar speaks to an app in the protocol each request came in.
//!
//! Each prints `ready PORT` once it listens, then one JSON line per request it parsed: the
//! method, the path and every header as it saw it. The test reads them as they come.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Python's `http.server`, answering every method with what it parsed (as JSON), and printing
/// the same on stdout. Keep-alive (HTTP/1.1), so pipelined and smuggled requests are parsed.
const PYTHON_JUDGE: &str = r#"
import http.server, json, socketserver, sys

class Judge(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def report(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        seen = {
            "judge": "python",
            "method": self.command,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        line = json.dumps(seen)
        print(line, flush=True)
        out = line.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    # Whatever the method, as wsgiref and Werkzeug run an app for any method (even one that
    # is not an HTTP token); http.server itself dispatches only to the do_<METHOD> it has.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.report
        raise AttributeError(name)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", 0), Judge)
print("ready", server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Node's `http` server, doing the same.
const NODE_JUDGE: &str = r#"
const http = require("http");
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
    }
    for (let i = 0; i < req.rawTrailers.length; i += 2) {
      headers.push([req.rawTrailers[i], req.rawTrailers[i + 1]]);
    }
    const line = JSON.stringify({
      judge: "node", method: req.method, path: req.url, headers,
      body: Buffer.concat(chunks).toString("latin1"),
    });
    console.log(line);
    res.setHeader("content-type", "application/json");
    res.end(line);
  });
});
server.listen(0, "127.0.0.1", () => console.log("ready " + server.address().port));
"#;

/// Node's `http2` and `http` on one port: the first bytes of a connection choose the server
/// (the HTTP/2 preface begins with `PRI`). Each report says which protocol carried the request
/// and includes the trailers with the headers.
const NODE_H2_JUDGE: &str = r#"
const http = require("http"), http2 = require("http2"), net = require("net");
function report(req, res, proto) {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
    }
    for (let i = 0; i < req.rawTrailers.length; i += 2) {
      headers.push([req.rawTrailers[i], req.rawTrailers[i + 1]]);
    }
    const line = JSON.stringify({
      judge: "node-h2", proto, method: req.method, path: req.url, headers,
      body: Buffer.concat(chunks).toString("latin1"),
    });
    console.log(line);
    res.setHeader("content-type", "application/json");
    res.end(line);
  });
  req.on("error", () => {});
}
const h1 = http.createServer((req, res) => report(req, res, "HTTP/1.1"));
const h2 = http2.createServer({}, (req, res) => report(req, res, "HTTP/2"));
h2.on("sessionError", () => {});
const server = net.createServer((socket) => {
  socket.on("error", () => {});
  socket.once("readable", () => {
    const first = socket.read();
    if (first === null) { socket.destroy(); return; }
    socket.unshift(first);
    (first.subarray(0, 3).toString() === "PRI" ? h2 : h1).emit("connection", socket);
  });
});
server.listen(0, "127.0.0.1", () => console.log("ready " + server.address().port));
"#;

/// The JDK's own HTTP server (`com.sun.net.httpserver`), doing the same: it takes anything
/// before the first space for a method.
const JAVA_JUDGE: &str = r#"
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;

public class Judge {
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        server.createContext("/", exchange -> {
            byte[] body = exchange.getRequestBody().readAllBytes();
            StringBuilder headers = new StringBuilder("[");
            for (Map.Entry<String, List<String>> e : exchange.getRequestHeaders().entrySet()) {
                for (String value : e.getValue()) {
                    if (headers.length() > 1) headers.append(',');
                    headers.append('[').append(q(e.getKey())).append(',').append(q(value)).append(']');
                }
            }
            headers.append(']');
            String line = "{\"judge\":\"java\",\"method\":" + q(exchange.getRequestMethod())
                + ",\"path\":" + q(exchange.getRequestURI().toString())
                + ",\"headers\":" + headers
                + ",\"body\":" + q(new String(body, StandardCharsets.ISO_8859_1)) + "}";
            System.out.println(line);
            System.out.flush();
            byte[] out = line.getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().add("content-type", "application/json");
            exchange.sendResponseHeaders(200, out.length);
            exchange.getResponseBody().write(out);
            exchange.close();
        });
        server.setExecutor(Executors.newCachedThreadPool());
        server.start();
        System.out.println("ready " + server.getAddress().getPort());
        System.out.flush();
    }
}
"#;

/// A judge app: its process, its address, and what it has parsed so far.
pub(crate) struct Judge {
    pub(crate) addr: SocketAddr,
    pub(crate) name: &'static str,
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
    /// The directory of the judge's source file, removed with it (the Java judge's).
    _source: Option<TempDir>,
}

impl Judge {
    /// Python's `http.server`.
    pub(crate) fn python() -> Self {
        Self::start("python", "python3", &["-c", PYTHON_JUDGE])
    }

    /// Node's `http`, or `None` where `node` is not installed (said on stderr), unless
    /// `HUSH_REQUIRE_NODE` is set (CI sets it): then that is a failure.
    pub(crate) fn node() -> Option<Self> {
        let found = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("HUSH_REQUIRE_NODE").is_none(),
                "HUSH_REQUIRE_NODE is set but node is not installed"
            );
            eprintln!("SKIPPED the Node judge: node is not installed");
            return None;
        }
        Some(Self::start("node", "node", &["-e", NODE_JUDGE]))
    }

    /// The JDK's HTTP server, or `None` where `java` is not installed (said on stderr), unless
    /// `HUSH_REQUIRE_JAVA` is set (CI sets it): then that is a failure.
    pub(crate) fn java() -> Option<Self> {
        let found = Command::new("java")
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("HUSH_REQUIRE_JAVA").is_none(),
                "HUSH_REQUIRE_JAVA is set but java is not installed"
            );
            eprintln!("SKIPPED the Java judge: java is not installed");
            return None;
        }
        // The source launcher runs a single file named after its class, in a directory of this
        // judge's own (another test may be starting one at the same time).
        let dir = tempfile::tempdir().expect("a directory for the Java judge");
        let source = dir.path().join("Judge.java");
        std::fs::write(&source, JAVA_JUDGE).expect("the Java judge's source");
        let source = source.to_str().expect("a UTF-8 path").to_owned();
        let mut judge = Self::start("java", "java", &[&source]);
        judge._source = Some(dir);
        Some(judge)
    }

    /// Node's `http2` (HTTP/2 with prior knowledge) and `http` on one port. Panics where
    /// `node` is not installed: the tests that need an HTTP/2 judge have no other.
    pub(crate) fn node_h2() -> Self {
        Self::start("node-h2", "node", &["-e", NODE_H2_JUDGE])
    }

    fn start(name: &'static str, program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} judge: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the {name} judge did not start"));
        let port: u16 = ready
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the {name} judge said {ready:?}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().expect("judge lines").push(value);
                }
            }
        });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name,
            child,
            seen,
            _source: None,
        }
    }

    /// Every request parsed so far.
    pub(crate) fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("judge lines").clone()
    }

    /// How many requests it has parsed.
    pub(crate) fn count(&self) -> usize {
        self.seen.lock().expect("judge lines").len()
    }

    /// Waits (bounded) until it has parsed more than `before` requests; false if it did not.
    pub(crate) fn wait_for_more_than(&self, before: usize, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.count() > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The values of every header the app would take for `name`: the same name in any case,
    /// and with `_` or `.` for `-` (CGI, WSGI and PHP map them all to one variable).
    pub(crate) fn values_of(request: &Value, name: &str) -> Vec<String> {
        let respell = |name: &str| name.to_ascii_lowercase().replace(['_', '.'], "-");
        let wanted = respell(name);
        request["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let header = respell(pair[0].as_str()?.trim());
                (header == wanted).then(|| pair[1].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
