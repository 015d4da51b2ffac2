"""An app that uses the Python `spiffe` package (py-spiffe, from PyPI) against a hush sidecar's
Workload API, for tests/e2e/workload_api.rs.

    python workload_api_client.py x509 SOCKET OUTDIR PEER_ADDR PEER_ID

takes its X.509-SVID from the Workload API (X509Source), writes it as PEM files in OUTDIR, calls
the hush sidecar at PEER_ADDR (host:port) with mutual TLS using it (Python's own ssl module,
nothing of hush), checks the server is PEER_ID, then waits for the SVID to rotate and calls
again with the new one. It prints one JSON object per line: what it saw.

    python workload_api_client.py jwt SOCKET AUDIENCE

fetches a JWT-SVID for AUDIENCE with JwtSource, validates it against the JWT bundle it got from
the Workload API (locally, with PyJWT) and through ValidateJWTSVID, and prints what it saw.
"""

import json
import os
import socket
import ssl
import sys
import threading

from cryptography.hazmat.primitives import serialization

# How long this script waits for what the sidecar does by itself (a rotation), at most.
PATIENCE = 150


def say(**what):
    print(json.dumps(what), flush=True)


def write_svid(svid, bundle, outdir, name):
    cert = os.path.join(outdir, f"{name}.pem")
    key = os.path.join(outdir, f"{name}.key")
    roots = os.path.join(outdir, "bundle.pem")
    with open(cert, "wb") as f:
        for c in svid.cert_chain:
            f.write(c.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(
            svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key, 0o600)
    with open(roots, "wb") as f:
        for c in bundle.x509_authorities:
            f.write(c.public_bytes(serialization.Encoding.PEM))
    return cert, key, roots


def call(peer, peer_id, cert, key, roots):
    """GET / over mutual TLS with the SVID; the server must prove peer_id."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # A SPIFFE server certificate names no host: the SPIFFE ID is checked below instead.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=roots)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    host, port = peer.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as tcp:
        with context.wrap_socket(tcp) as tls:
            sans = tls.getpeercert().get("subjectAltName", ())
            uris = [value for kind, value in sans if kind == "URI"]
            if uris != [peer_id]:
                raise SystemExit(f"the server proved {uris}, not {peer_id}")
            tls.sendall(b"GET /from-py-spiffe HTTP/1.1\r\nhost: backend.shop\r\nconnection: close\r\n\r\n")
            response = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, body.decode()


def x509(socket_path, outdir, peer, peer_id):
    from spiffe import X509Source

    source = X509Source(socket_path=f"unix://{socket_path}", timeout_in_seconds=PATIENCE)
    updated = threading.Event()
    source.subscribe_for_updates(updated.set)
    try:
        first = source.svid
        td = first.spiffe_id.trust_domain
        bundle = source.get_bundle_for_trust_domain(td)
        say(
            event="svid",
            spiffe_id=str(first.spiffe_id),
            serial=format(first.leaf.serial_number, "x"),
            chain=len(first.cert_chain),
            roots=len(bundle.x509_authorities),
            key=f"{type(first.private_key).__name__} {first.private_key.curve.name}",
        )
        files = write_svid(first, bundle, outdir, "first")
        status, body = call(peer, peer_id, *files)
        say(event="call", status=status, body=json.loads(body))

        # The sidecar renews at about half the certificate's life and sends the new SVID down
        # the stream X509Source keeps open.
        while source.svid.leaf.serial_number == first.leaf.serial_number:
            if not updated.wait(PATIENCE):
                raise SystemExit("no new SVID within the patience")
            updated.clear()
        second = source.svid
        same_key = second.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == first.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        say(
            event="rotated",
            spiffe_id=str(second.spiffe_id),
            serial=format(second.leaf.serial_number, "x"),
            same_key=same_key,
        )
        files = write_svid(second, source.get_bundle_for_trust_domain(td), outdir, "second")
        status, body = call(peer, peer_id, *files)
        say(event="call", status=status, body=json.loads(body))
    finally:
        source.close()


def jwt_(socket_path, audience):
    import jwt as pyjwt
    from spiffe import JwtSource, WorkloadApiClient

    source = JwtSource(socket_path=f"unix://{socket_path}", timeout_in_seconds=PATIENCE)
    try:
        svid = source.fetch_svid(audience={audience})
        td = svid.spiffe_id.trust_domain
        bundle = source.get_bundle_for_trust_domain(td)
        header = pyjwt.get_unverified_header(svid.token)
        key = bundle.get_jwt_authority(header["kid"])
        claims = pyjwt.decode(svid.token, key=key, algorithms=[header["alg"]], audience=audience)
        say(event="jwt", spiffe_id=str(svid.spiffe_id), alg=header["alg"], sub=claims["sub"], aud=claims["aud"])
        with WorkloadApiClient(socket_path=f"unix://{socket_path}") as client:
            validated = client.validate_jwt_svid(svid.token, audience)
            say(event="validated", spiffe_id=str(validated.spiffe_id))
            try:
                client.validate_jwt_svid(svid.token, "someone-else")
                say(event="validated-wrong-audience")
            except Exception as e:  # the sidecar refuses it, in words
                say(event="refused", error=str(e))
    finally:
        source.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "x509":
        x509(*sys.argv[2:6])
    elif mode == "jwt":
        jwt_(*sys.argv[2:4])
    else:
        raise SystemExit(f"unknown mode {mode}")
