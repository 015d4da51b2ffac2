"""Third-party clients of the hush gateway, for tests/e2e/gateway.rs.

Usage: gateway_client.py PORT HOST ROOT_PEM

Connects to 127.0.0.1:PORT as HOST (SNI and Host), trusting ROOT_PEM, over TLS 1.2 and then
TLS 1.3 with Python's own `ssl` (OpenSSL), and for each: an HTTPS request with `http.client`,
a WebSocket echo over wss with `websockets`, and a gRPC health check with `grpcio` (HTTP/2).
Prints one JSON object with what each client saw; the Rust test judges it.
"""

import http.client
import json
import socket
import ssl
import sys

import grpc
from websockets.sync.client import connect as ws_connect

PORT, HOST, ROOT = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def context(version):
    ctx = ssl.create_default_context(cafile=ROOT)
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


def https_get(version):
    ctx = context(version)
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=20)
    tls = ctx.wrap_socket(sock, server_hostname=HOST)
    conn = http.client.HTTPSConnection(HOST, PORT, context=ctx, timeout=20)
    conn.sock = tls
    conn.request("GET", "/echo", headers={"X-Forwarded-For": "198.51.100.7"})
    response = conn.getresponse()
    body = json.loads(response.read())
    return {
        "tls": tls.version(),
        "status": response.status,
        "hsts": response.getheader("strict-transport-security"),
        "peer_identity": body["peer_identity"],
        "x_forwarded_for": body["x_forwarded_for"],
        "x_forwarded_proto": body["x_forwarded_proto"],
    }


def wss_echo(version):
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=20)
    with ws_connect(
        f"wss://{HOST}:{PORT}/ws",
        sock=sock,
        ssl=context(version),
        server_hostname=HOST,
        open_timeout=20,
    ) as ws:
        ws.send("hello through the gateway")
        return {"echo": ws.recv(timeout=20)}


def grpc_health():
    # grpcio speaks TLS 1.2 or 1.3 as its BoringSSL negotiates; HTTP/2 over ALPN either way.
    with open(ROOT, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", HOST), ("grpc.default_authority", HOST)]
    with grpc.secure_channel(f"127.0.0.1:{PORT}", credentials, options=options) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        # HealthCheckRequest{service: ""} is the empty message; SERVING is field 1 = 1.
        response = check(b"", timeout=20)
        return {"health": response.hex()}


result = {}
for name, version in [("tls1.2", ssl.TLSVersion.TLSv1_2), ("tls1.3", ssl.TLSVersion.TLSv1_3)]:
    result[name] = {"https": https_get(version), "wss": wss_echo(version)}
result["grpc"] = grpc_health()
print(json.dumps(result))
