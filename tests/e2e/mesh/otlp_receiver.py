"""A real OTLP/gRPC trace receiver for the end-to-end tests.

It serves `opentelemetry.proto.collector.trace.v1.TraceService/Export` with the official
OpenTelemetry protobuf definitions (the `opentelemetry-proto` package) and `grpcio`, so the
tests check hush's traces against the reference schema rather than against our own decoder.

It listens on a free loopback port and prints `listening 127.0.0.1:PORT`, then one JSON line
per span received. It exits on SIGTERM, SIGINT, or when its stdin closes (when the test ends).
"""

import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

print_lock = threading.Lock()


def emit(line):
    with print_lock:
        print(line, flush=True)


def value(any_value):
    """An OTLP AnyValue as a plain Python value."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = attributes(resource_spans.resource.attributes).get("service.name")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    emit(json.dumps({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                        "service": service if isinstance(service, str) else "",
                        "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                        "status_message": span.status.message,
                        "attributes": attributes(span.attributes),
                        "events": [
                            {"name": e.name, "attributes": attributes(e.attributes)}
                            for e in span.events
                        ],
                        "start_unix_nano": span.start_time_unix_nano,
                        "end_unix_nano": span.end_time_unix_nano,
                    }))
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin():
        while os.read(sys.stdin.fileno(), 4096):  # unbuffered: no lock held at shutdown
            pass
        stop.set()  # EOF: the test process is gone

    threading.Thread(target=watch_stdin, daemon=True).start()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit(f"listening 127.0.0.1:{port}")
    stop.wait()
    server.stop(grace=None).wait()


if __name__ == "__main__":
    main()
