"""The loop demo's app: one process plays one stack, with hidden effects.

augur and its model are never told about these effects. The app sees exactly
what a real app behind Envoy sees — the client's own headers (User-Agent,
x-geo-region, the x-user-* history headers, the path and method) plus what augur
added (x-augur-stack, x-augur-features, x-augur-decision) — and plants, per
(feature, segment) pair, an effect on the request's outcome:

world "demo" (`--world demo`, the default): large effects on single attributes

    harm      (search_v2,     device tablet)        +1200 ms latency, p 0.7
    harm      (new_checkout,  location latam)       503, p 0.5
    harm      (hd_images,     path /static)         503, p 0.35
    harm      (one_click_pay, device bot)           app security event, p 0.7
    benefit   (recommendations, sessions_30d >= 25) engagement, p 0.4
    benefit   (one_click_pay, device desktop)       engagement, p 0.3
    benefit   (search_v2,     device mobile)        engagement, p 0.25

world "tangled" (`--world tangled`): what single cells and a `slow_ms` cut miss

    harm      (new_checkout,  mobile AND write)     503, p 0.5      an interaction (~9% of traffic)
    harm      (hd_images,     tablet AND latam)     503, p 0.6      a rare segment (~1% of traffic)
    harm      (recommendations, location eu)        503, p 0.04     a small effect
    harm      (one_click_pay, everywhere)           503, p 0.03     a mild everywhere-regression
    harm      (search_v2,     device desktop)       +300 ms, p 0.9  latency below slow_ms (1000)
    benefit   (recommendations, sessions_30d >= 25) engagement, p 0.4   overlaps the eu harm
    benefit   (new_checkout,  sessions_30d >= 25)   engagement, p 0.3   overlaps mobile AND write
    benefit   (search_v2,     device mobile)        engagement, p 0.25
    benefit   (hd_images,     device desktop)       engagement, p 0.2

plus background noise on both stacks (0.5% 503, 8% engagement). These differ
from the truths the default model was trained on (python/augur_tools/sim/synthetic.py
true_impacts), so the loop has to learn them. A segment is one request
attribute, an AND of two (`mobile&write`), or `all`.

A pair is *exposed* on a request when the feature is in x-augur-features and
the request is in the segment — whether or not the random effect then fires.
Every random draw is a hash of (x-request-id, effect), so the same request
gets the same draws in every run. With `--truth FILE` the app appends one JSON
line per request (buffered, flushed every 0.5 s and on exit):

    {"id": "r000042", "stack": "new", "features": ["search_v2", ...],
     "device": "tablet", "harms": ["search_v2@tablet"], "benefits": [],
     "status": 200, "delay_ms": 1200, "engaged": false, "security": false}

    python -m augur_tools.sim.planted --name new --port 18082 --truth .run/truth.jsonl

Listens on 127.0.0.1 only. The app reports engagement and security events to
augur with the KPI-contract response headers (x-augur-engagement /
x-augur-security), which augur strips before the client sees them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from augur_tools.envoy.upstream import AppHandler, send_answer

# --------------------------------------------------------------------------
# The hidden world
# --------------------------------------------------------------------------

# Per world: (kind, feature, segment, effect, probability). Effects:
# "latency:<ms>", "status:<code>", "security", "engage".
WORLDS = {
    "demo": (
        ("harm", "search_v2", "tablet", "latency:1200", 0.7),
        ("harm", "new_checkout", "latam", "status:503", 0.5),
        ("harm", "hd_images", "static", "status:503", 0.35),
        ("harm", "one_click_pay", "bot", "security", 0.7),
        ("benefit", "recommendations", "sessions_high", "engage", 0.4),
        ("benefit", "one_click_pay", "desktop", "engage", 0.3),
        ("benefit", "search_v2", "mobile", "engage", 0.25),
    ),
    "tangled": (
        ("harm", "new_checkout", "mobile&write", "status:503", 0.5),
        ("harm", "hd_images", "tablet&latam", "status:503", 0.6),
        ("harm", "recommendations", "eu", "status:503", 0.04),
        ("harm", "one_click_pay", "all", "status:503", 0.03),
        ("harm", "search_v2", "desktop", "latency:300", 0.9),
        ("benefit", "recommendations", "sessions_high", "engage", 0.4),
        ("benefit", "new_checkout", "sessions_high", "engage", 0.3),
        ("benefit", "search_v2", "mobile", "engage", 0.25),
        ("benefit", "hd_images", "desktop", "engage", 0.2),
    ),
}
EFFECTS = WORLDS["demo"]
BACKGROUND_ERROR = 0.005
BACKGROUND_ENGAGE = 0.08

# Segment predicates over what the app knows about a request.
SEGMENTS = {
    "tablet": lambda r: r["device"] == "tablet",
    "mobile": lambda r: r["device"] == "mobile",
    "desktop": lambda r: r["device"] == "desktop",
    "bot": lambda r: r["device"] == "bot",
    "latam": lambda r: r["region"] == "latam",
    "static": lambda r: r["path"].startswith("/static"),
    "sessions_high": lambda r: r["sessions"] >= 25,
    "errors_high": lambda r: r["errors"] >= 5,
    "write": lambda r: r["method"] in ("POST", "PUT", "PATCH", "DELETE"),
    "eu": lambda r: r["region"] == "eu",
    "all": lambda r: True,
}


def in_segment(segment, req):
    """`req` is in `segment`: one name of SEGMENTS, or an AND of names (`a&b`)."""
    return all(SEGMENTS[s](req) for s in segment.split("&"))


def effects(world):
    """The planted effects of `world` (a key of WORLDS); the error names the choices."""
    try:
        return WORLDS[world]
    except KeyError:
        raise ValueError(f"unknown world {world!r}: one of {', '.join(WORLDS)}") from None


def pair(feature, segment):
    return f"{feature}@{segment}"




def app_device(user_agent):
    """The app's own User-Agent classification (its analytics, not augur's)."""
    ua = (user_agent or "").lower()
    if any(b in ua for b in ("bot", "spider", "crawl")):
        return "bot"
    if "ipad" in ua or "tablet" in ua or ("android" in ua and "mobile" not in ua):
        return "tablet"
    if any(m in ua for m in ("mobile", "iphone", "android")):
        return "mobile"
    if any(d in ua for d in ("windows", "macintosh", "x11", "linux")):
        return "desktop"
    return "unknown"


def draw(request_id, what):
    """A uniform [0, 1) draw, a pure function of (request id, what)."""
    h = hashlib.blake2b(f"{request_id}|{what}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def attributes(headers, path, method="GET"):
    """What the app knows about a request, the input of the segment predicates."""
    return {
        "device": app_device(headers.get("user-agent")),
        "region": (headers.get("x-geo-region") or "").lower(),
        "path": path,
        "method": method.upper(),
        "sessions": _int(headers.get("x-user-sessions-30d")),
        "purchases": _int(headers.get("x-user-purchases-90d")),
        "tenure": _int(headers.get("x-user-tenure-days")),
        "errors": _int(headers.get("x-user-errors-7d")),
    }


def outcome(headers, path, stack, method="GET", world=EFFECTS):
    """What happens to one request: (status, delay_ms, engaged, security, truth)."""
    rid = headers.get("x-augur-decision") or headers.get("x-request-id") or ""
    req = attributes(headers, path, method)
    features = [f for f in (headers.get("x-augur-features") or "").split(",") if f]
    status, delay_ms = 200, 0
    engaged = draw(rid, "background-engage") < BACKGROUND_ENGAGE
    security = False
    if draw(rid, "background-error") < BACKGROUND_ERROR:
        status = 503
    harms, benefits = [], []
    for kind, feature, segment, effect, p in world:
        if feature not in features or not in_segment(segment, req):
            continue
        name = pair(feature, segment)
        (harms if kind == "harm" else benefits).append(name)
        if draw(rid, name) >= p:
            continue
        if effect.startswith("latency:"):
            delay_ms = max(delay_ms, int(effect.split(":")[1]))
        elif effect.startswith("status:"):
            status = int(effect.split(":")[1])
        elif effect == "security":
            security = True
        elif effect == "engage":
            engaged = True
    truth = {
        "id": rid,
        "stack": stack,
        "features": features,
        "device": req["device"],
        "harms": harms,
        "benefits": benefits,
        "status": status,
        "delay_ms": delay_ms,
        "engaged": engaged,
        "security": security,
    }
    return status, delay_ms, engaged, security, truth


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class TruthLog:
    """Buffered JSON-lines writer, flushed by a timer thread and on close."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.buf = []
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 (closed by close())
        self.stop = threading.Event()
        if self.file:
            threading.Thread(target=self._loop, daemon=True).start()

    def add(self, obj):
        if self.file:
            line = json.dumps(obj, separators=(",", ":"))
            with self.lock:
                self.buf.append(line)

    def flush(self):
        if not self.file:
            return
        with self.lock:
            lines, self.buf = self.buf, []
        if lines:
            self.file.write("\n".join(lines) + "\n")
            self.file.flush()

    def _loop(self):
        while not self.stop.wait(0.5):
            self.flush()

    def close(self):
        self.stop.set()
        self.flush()
        if self.file:
            self.file.close()
            self.file = None


def make_handler(name, truth_log, world):
    class Handler(AppHandler):
        def answer(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, delay_ms, engaged, security, truth = outcome(headers, self.path, name, self.command, world)
            truth_log.add(truth)
            if delay_ms:
                time.sleep(delay_ms / 1000.0)
            body = b'{"served_by":"%s"}' % name.encode()
            send_answer(self, name, status, body, engaged, security)

    return Handler


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="stack name (old / new)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--truth", default=None, help="append one JSON line per request here")
    p.add_argument("--world", default="demo", choices=sorted(WORLDS), help="which hidden effects to plant")
    args = p.parse_args(argv)
    truth_log = TruthLog(args.truth)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.name, truth_log, WORLDS[args.world]))
    server.daemon_threads = True
    server.request_queue_size = 256

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"planted app {args.name} ({args.world} world) on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        truth_log.close()
        server.server_close()


if __name__ == "__main__":
    main()
