#!/usr/bin/python3
"""A hostile client of the hush CA, for the end-to-end tests of ca_limits.rs. Python standard
library only.

Each probe does one thing a client without credentials can do to the CA's port and prints one
JSON line saying what the CA did about it. Every wait is bounded (--wait); "open" means the CA
still had the connection when the bound ran out.

  hold       open --count connections from --source (plain TCP, TLS then silence, or both
             alternating), print how many the CA kept and how many it reset, then on each stdin
             line "status" print how many are still open; EOF or "release" closes them all.
  probe      one connection doing --kind: garbage, plaintext-h2, slow-handshake, tls-silent,
             preface-silent, idle-after-request, rapid-reset, settings-flood,
             continuation-flood, big-headers.

HTTP/2 frames are written by hand (RFC 9113), with HPACK literals only (RFC 7541 section 6.2.2),
so that the probes can send what no well-behaved library would.
"""

import argparse
import errno
import json
import os
import resource
import select
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8

TRUST_BUNDLE_PATH = "/hush.ca.v1.CertificateAuthority/GetTrustBundle"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first_byte=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = [first_byte | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """A literal header field without indexing, new name, no Huffman coding."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def grpc_headers(path=TRUST_BUNDLE_PATH, extra=()):
    fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] + list(extra)
    return b"".join(hpack_literal(n, v) for n, v in fields)


def empty_grpc_message():
    return b"\x00" + struct.pack(">I", 0)


class Closed(Exception):
    pass


class H2:
    """Just enough of an HTTP/2 client connection to read what the server does."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.goaway = None
        self.pings_answered = 0
        # After a flood the socket may hold a half-written TLS record: only read from then on.
        self.mute = False

    def send(self, data):
        if self.mute:
            return
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            raise Closed

    def read_frame(self, deadline):
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                raise Closed
            if not chunk:
                raise Closed
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream = struct.unpack(">I", self.buffer[5:9])[0] & 0x7FFFFFFF
        payload = self.buffer[9 : 9 + length]
        self.buffer = self.buffer[9 + length :]
        self.react(kind, flags, payload)
        return kind, flags, stream, payload

    def react(self, kind, flags, payload):
        """Behaves like a live client: acknowledges SETTINGS and PINGs, notes GOAWAY."""
        if kind == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif kind == PING and flags & ACK:
            self.pings_answered += 1
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = {"last_stream": last & 0x7FFFFFFF, "code": code, "debug": payload[8:].decode("latin-1")}

    def start(self):
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def until_closed(self, deadline):
        """Reads (answering as a live client) until the server closes; True if it did."""
        try:
            while True:
                self.read_frame(deadline)
        except Closed:
            return True
        except TimeoutError:
            return False


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tls_context(bundle):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    return context


def connect(args, source=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if source:
        sock.bind((source, 0))
    sock.settimeout(args.wait)
    sock.connect((args.host, args.port))
    return sock


def tls_connect(args, source=None):
    sock = connect(args, source)
    tls = tls_context(args.bundle).wrap_socket(sock, server_hostname="localhost")
    return tls


def closed_by_peer(sock):
    """Whether the peer has closed or reset `sock`, without waiting."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not poller.poll(0):
        return False
    try:
        raw = sock if not isinstance(sock, ssl.SSLSocket) else socket.socket(fileno=os.dup(sock.fileno()))
        try:
            raw.setblocking(False)
            return raw.recv(1, socket.MSG_PEEK) == b""
        finally:
            if raw is not sock:
                raw.close()
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_closed(sock, deadline):
    """Waits until the peer closes `sock` (reading and discarding); True if it did."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True


# === hold ===

# Connections are opened in batches, each driven until every one of them is kept or refused: the
# CA takes connections in order, so the next batch meets a CA that has judged the last.
BATCH = 100


class Held:
    def __init__(self, kind, sock):
        self.kind = kind
        self.sock = sock
        # Kept apart: wrapping in TLS keeps the descriptor, but a failed wrap detaches it.
        self.fd = sock.fileno()
        self.state = "connecting"  # then "handshaking" (TLS), "open" or "refused"


def open_nonblocking(args, kind, errors):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.source:
        sock.bind((args.source, 0))
    sock.setblocking(False)
    code = sock.connect_ex((args.host, args.port))
    held = Held(kind, sock)
    if code in (errno.ECONNRESET, errno.ECONNREFUSED):
        held.state = "refused"
    elif code not in (0, errno.EINPROGRESS):
        name = errno.errorcode.get(code, str(code))
        errors[name] = errors.get(name, 0) + 1
        sock.close()
        return None
    return held


def drive(batch, context, deadline):
    """Advances connects and TLS handshakes without blocking, until each connection is open or
    refused, or the deadline passes (what is left is still pending)."""
    waiting = {}
    poller = select.poll()

    def wait_for(held, events):
        fd = held.fd
        if fd in waiting:
            poller.modify(fd, events)
        else:
            poller.register(fd, events)
        waiting[fd] = held

    def done(held, state):
        held.state = state
        fd = held.fd
        if fd in waiting:
            poller.unregister(fd)
            del waiting[fd]

    def step(held):
        if held.state == "connecting":
            code = held.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return done(held, "refused")
            if held.kind == "tcp":
                return done(held, "open")
            try:
                held.sock = context.wrap_socket(held.sock, server_hostname="localhost", do_handshake_on_connect=False)
            except OSError:
                # Reset between the connect and the handshake's start.
                return done(held, "refused")
            held.state = "handshaking"
        try:
            held.sock.do_handshake()
            done(held, "open")
        except ssl.SSLWantReadError:
            wait_for(held, select.POLLIN)
        except ssl.SSLWantWriteError:
            wait_for(held, select.POLLOUT)
        except (ssl.SSLError, OSError):
            done(held, "refused")

    for held in batch:
        if held.state == "connecting":
            wait_for(held, select.POLLOUT)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for fd, _ in poller.poll(min(left, 1.0) * 1000):
            held = waiting.get(fd)
            if held is not None:
                step(held)


def hold(args):
    raise_fd_limit()
    context = tls_context(args.bundle)
    deadline = time.monotonic() + args.wait
    errors = {}
    conns = []
    started = time.monotonic()
    while len(conns) < args.count and time.monotonic() < deadline:
        batch = []
        for i in range(len(conns), min(len(conns) + BATCH, args.count)):
            kind = args.mode if args.mode != "mixed" else ("tcp" if i % 2 == 0 else "tls")
            # Each batch ends with a TLS connection, whose handshake is answered only once the
            # CA has come to it, and so to every connection before it.
            if i == min(len(conns) + BATCH, args.count) - 1:
                kind = "tls"
            held = open_nonblocking(args, kind, errors)
            if held is not None:
                batch.append(held)
        drive(batch, context, deadline)
        conns += batch
        if not batch:
            break
    opening = time.monotonic() - started
    counts = {f"{what}_{kind}": 0 for what in ("kept", "refused", "pending") for kind in ("tcp", "tls")}
    still = []
    for held in conns:
        if held.state == "open" and closed_by_peer(held.sock):
            held.state = "refused"
        what = {"open": "kept", "refused": "refused"}.get(held.state, "pending")
        counts[f"{what}_{held.kind}"] += 1
        if what == "refused":
            held.sock.close()
        else:
            still.append(held)
    report = {
        "attempted": args.count,
        "kept": counts["kept_tcp"] + counts["kept_tls"],
        "refused": counts["refused_tcp"] + counts["refused_tls"],
        "pending": counts["pending_tcp"] + counts["pending_tls"],
        **counts,
        "connect_errors": errors,
        "seconds_to_open": round(opening, 3),
    }
    print(json.dumps(report), flush=True)
    kept = [held for held in still if held.state == "open"]
    for line in sys.stdin:
        if line.strip() == "status":
            open_now = sum(1 for held in kept if not closed_by_peer(held.sock))
            print(json.dumps({"still_open": open_now}), flush=True)
        else:
            break
    for held in still:
        held.sock.close()


# === probes ===


def probe(args):
    deadline = time.monotonic() + args.wait
    result = {"kind": args.kind}
    started = time.monotonic()
    if args.kind == "garbage":
        sock = connect(args)
        sock.sendall(os.urandom(4096))
        result["closed"] = wait_closed(sock, deadline)
    elif args.kind == "plaintext-h2":
        sock = connect(args)
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, grpc_headers()))
        result["closed"] = wait_closed(sock, deadline)
    elif args.kind == "slow-handshake":
        sock = connect(args)
        # A TLS handshake record header announcing 512 bytes, and then nothing.
        sock.sendall(b"\x16\x03\x01\x02\x00")
        result["closed"] = wait_closed(sock, deadline)
    elif args.kind == "tls-silent":
        sock = tls_connect(args)
        result["alpn"] = sock.selected_alpn_protocol()
        result["closed"] = wait_closed(sock, deadline)
    else:
        sock = tls_connect(args)
        h2 = H2(sock)
        h2.start()
        if args.kind == "preface-silent":
            result["closed"] = h2.until_closed(deadline)
        elif args.kind == "idle-after-request":
            result.update(idle_after_request(h2, deadline))
        elif args.kind == "rapid-reset":
            burst = b""
            for i in range(args.streams):
                stream = 2 * i + 1
                burst += frame(HEADERS, END_HEADERS, stream, grpc_headers())
                burst += frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
            result["sent"] = send_until_blocked(sock, burst, deadline)
            h2.mute = True
            result["closed"] = h2.until_closed(deadline)
        elif args.kind == "settings-flood":
            flood = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)) * args.frames
            result["sent"] = send_until_blocked(sock, flood, deadline)
            h2.mute = True
            result["closed"] = h2.until_closed(deadline)
        elif args.kind == "continuation-flood":
            burst = frame(HEADERS, 0, 1, grpc_headers())
            burst += frame(CONTINUATION, 0, 1, hpack_literal("x-flood", "y" * 100)) * args.frames
            result["sent"] = send_until_blocked(sock, burst, deadline)
            h2.mute = True
            result["closed"] = h2.until_closed(deadline)
        elif args.kind == "big-headers":
            headers = grpc_headers(extra=[("x-big", "z" * 15000), ("x-bigger", "z" * 15000)])
            chunks = [headers[i : i + 16384] for i in range(0, len(headers), 16384)]
            burst = frame(HEADERS, END_HEADERS if len(chunks) == 1 else 0, 1, chunks[0])
            for n, chunk in enumerate(chunks[1:], start=2):
                burst += frame(CONTINUATION, END_HEADERS if n == len(chunks) else 0, 1, chunk)
            sock.sendall(burst)
            result.update(stream_outcome(h2, 1, deadline))
        else:
            raise SystemExit(f"unknown probe {args.kind!r}")
        result["goaway"] = h2.goaway
        result["pings_answered"] = h2.pings_answered
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)


def send_until_blocked(sock, data, deadline):
    """Sends as much of `data` as the server reads before it stops reading or closes."""
    sent = 0
    sock.settimeout(1.0)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent : sent + 65536])
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            break
    return sent


def stream_outcome(h2, stream, deadline):
    """How the server ended `stream`: a reset (with its code), an answer (its HTTP status and how
    many DATA frames it had), or the end of the connection."""
    status = None
    data_frames = 0
    try:
        while True:
            kind, flags, sid, payload = h2.read_frame(deadline)
            if sid != stream:
                continue
            if kind == RST_STREAM:
                return {"stream": "reset", "code": struct.unpack(">I", payload)[0]}
            if kind == HEADERS and status is None:
                status = http_status(payload, flags)
            if kind == DATA:
                data_frames += 1
            if kind in (HEADERS, DATA) and flags & END_STREAM:
                return {"stream": "answered", "status": status, "data_frames": data_frames}
    except Closed:
        return {"stream": "connection closed"}
    except TimeoutError:
        return {"stream": "no answer"}


# RFC 7541 appendix B, the digits only: enough to read a response's :status.
HUFFMAN_DIGITS = {(0x0, 5): "0", (0x1, 5): "1", (0x2, 5): "2"}
HUFFMAN_DIGITS.update({(0x19 + d, 6): str(3 + d) for d in range(7)})
# The static table's :status entries (RFC 7541 appendix A).
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def http_status(block, flags):
    """The :status of a response header block, which servers send first. None if unreadable."""
    PADDED, PRIORITY = 0x8, 0x20
    if flags & PADDED:
        block = block[1 : len(block) - block[0]]
    if flags & PRIORITY:
        block = block[5:]
    if not block:
        return None
    first = block[0]
    if first & 0x80:
        return STATIC_STATUS.get(first & 0x7F)
    # A literal whose name is the static table's :status (index 8 to 14), with or without indexing.
    index = first & 0x3F if first & 0x40 else first & 0x0F
    if index not in STATIC_STATUS or len(block) < 2:
        return None
    huffman, length = block[1] & 0x80, block[1] & 0x7F
    value = block[2 : 2 + length]
    if not huffman:
        text = value.decode("latin-1")
    else:
        bits = "".join(f"{byte:08b}" for byte in value)
        text, code = "", ""
        for bit in bits:
            code += bit
            digit = HUFFMAN_DIGITS.get((int(code, 2), len(code)))
            if digit is not None:
                text, code = text + digit, ""
        # What is left is the EOS padding (all ones).
    return int(text) if text.isdigit() else None


def idle_after_request(h2, deadline):
    """One request answered, then PINGs only, until the server closes the connection."""
    h2.send(frame(HEADERS, END_HEADERS, 1, grpc_headers()) + frame(DATA, END_STREAM, 1, empty_grpc_message()))
    outcome = stream_outcome(h2, 1, deadline)
    if outcome.get("stream") != "answered":
        return {"request": outcome, "closed": False}
    pings_sent = 0
    closed = False
    while time.monotonic() < deadline:
        try:
            h2.send(frame(PING, 0, 0, struct.pack(">Q", pings_sent)))
            pings_sent += 1
            h2.read_frame(min(deadline, time.monotonic() + 0.2))
        except TimeoutError:
            continue
        except (Closed, OSError, ssl.SSLError):
            closed = True
            break
    return {"request": outcome, "pings_sent": pings_sent, "closed": closed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bundle", required=True, help="the CA's bundle.pem")
    parser.add_argument("--wait", type=float, default=15.0, help="bound on every wait, seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--mode", choices=["tcp", "tls", "mixed"], default="mixed")
    h.add_argument("--source", default=None, help="local address to connect from, e.g. 127.0.0.2")
    p = sub.add_parser("probe")
    p.add_argument("--kind", required=True)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--frames", type=int, default=100000)
    args = parser.parse_args()
    if args.command == "hold":
        hold(args)
    else:
        probe(args)


if __name__ == "__main__":
    main()
