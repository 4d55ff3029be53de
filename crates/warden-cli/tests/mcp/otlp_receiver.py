"""An OpenTelemetry collector's OTLP/HTTP trace endpoint, for the traces test: it decodes what
Warden exports with the official OpenTelemetry protobuf definitions (PyPI
`opentelemetry-proto`) and writes one JSON object per span to OUT (JSON Lines).

Usage: otlp_receiver.py PORT OUT

Only `POST /v1/traces` with `Content-Type: application/x-protobuf` is accepted (gzip-encoded
or not); anything else is answered 400 and recorded in OUT as {"refused": why}, so the test sees
it.
"""

import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PORT, OUT = int(sys.argv[1]), sys.argv[2]


def value(v):
    """An AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def record(line):
    with open(OUT, "a") as f:
        f.write(json.dumps(line) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        why = None
        if self.path != "/v1/traces":
            why = f"path {self.path}"
        elif self.headers.get("Content-Type") != "application/x-protobuf":
            why = f"content type {self.headers.get('Content-Type')}"
        if why:
            record({"refused": why})
            self.send_response(400)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    record(
                        {
                            "resource": resource,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        }
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
