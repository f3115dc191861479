"""A small app behind augur that reads its flags through OpenFeature.

    python clients/python/example_app.py --port 18090

Answers `GET /?flags=a,b` with JSON: for each flag, what
`client.get_boolean_details(flag, False, augur_context(request headers))`
returned (value, variant, reason, error code, flag metadata). The integration
test runs it behind the real Envoy. Listens on 127.0.0.1 only.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from openfeature import api

from augur_openfeature import AugurProvider, augur_context

api.set_provider(AugurProvider())
CLIENT = api.get_client("example-app")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        flags = [f for f in parse_qs(urlparse(self.path).query).get("flags", [""])[0].split(",") if f]
        ctx = augur_context(self.headers.items())
        out = {}
        for flag in flags:
            d = CLIENT.get_boolean_details(flag, False, ctx)
            out[flag] = {
                "value": d.value,
                "variant": d.variant,
                "reason": str(d.reason) if d.reason else None,
                "error_code": str(d.error_code) if d.error_code else None,
                "metadata": dict(d.flag_metadata),
            }
        body = json.dumps({"flags": out, "stack": self.headers.get("x-augur-stack")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
