"""Demo upstream: one process plays one stack ("old" or "new").

It answers every request with a JSON body echoing the request headers it
received, so tests and the demo can see exactly what augur sent upstream
(routing header, feature flags, decision id), and tags the response with
`x-served-by: <stack>`. Test knobs, sent by the client: `x-demo-status: 503`
answers with that status; `x-demo-harm: <feature>:<rate>[,…]` answers 503 with
that probability when <feature> is among the enabled features; `x-demo-slow: <feature>:<ms>` answers
that much later when <feature> is enabled; `x-demo-engage: 1` / `x-demo-security: 1` make the
app report an engagement / security event in `x-augur-engagement` /
`x-augur-security`.

    python -m augur_tools.envoy.upstream --name new --port 18081

Listens on 127.0.0.1 only.
"""

import argparse
import json
import random
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RNG = random.Random(7)


def send_answer(handler, name, status, body, engaged, security):
    """Writes a JSON response from stack `name`, with the app's side of the KPI
    contract: engagements and security events reported to augur in response
    headers (augur strips them before the client). Shared with planted.py."""
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.send_header("x-served-by", name)
    if engaged:
        handler.send_header("x-augur-engagement", "1")
    if security:
        handler.send_header("x-augur-security", "1")
    handler.end_headers()
    handler.wfile.write(body)


class AppHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler of the test apps (this upstream and
    planted.py): drains the request body, then calls `self.answer()`."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle plus
        # delayed ACKs add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.answer()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def answer(self):
        raise NotImplementedError

    def log_message(self, *args):
        pass


def make_handler(name):
    class Handler(AppHandler):
        def answer(self):
            body = json.dumps(
                {
                    "served_by": name,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            ).encode()
            status = int(self.headers.get("x-demo-status") or 200)
            # x-demo-harm: <feature>:<rate>[,<feature>:<rate>…] — fail with that
            # probability when augur turned <feature> on for this request (a planted regression).
            enabled = (self.headers.get("x-augur-features") or "").split(",")
            for item in (self.headers.get("x-demo-harm") or "").split(","):
                feature, _, rate = item.strip().partition(":")
                if feature and feature in enabled and RNG.random() < float(rate or 1):
                    status = 503
            # x-demo-slow: <feature>:<ms> — a latency regression planted on <feature>.
            slow = self.headers.get("x-demo-slow")
            if slow:
                feature, _, ms = slow.partition(":")
                if feature in (self.headers.get("x-augur-features") or "").split(","):
                    time.sleep(min(float(ms or 0), 5000.0) / 1000.0)
            engaged = self.headers.get("x-demo-engage") == "1"
            security = self.headers.get("x-demo-security") == "1"
            send_answer(self, name, status, body, engaged, security)

    return Handler


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.name))
    server.daemon_threads = True
    print(f"upstream {args.name} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
