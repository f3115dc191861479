"""Sanity-check a model through augur's real decision path.

    python -m augur_tools.demos.decide_report --augur target/release/augur \\
        --config envoy/augur-demo.json --n 300 --seed 11 [--model M.onnx]

Sends seeded synthetic requests (python/augur_tools/sim/synthetic.py) through
``augur decide`` (profile → model → flag rules → routing, exactly as the filter
runs them), then prints, for the requests routed to the new stack, the share of
requests on which each feature is on — per device and per tier — the reasons
features were off, and whether the planted patterns show up (e.g. hd_images
off on phones, search_v2 off for bots).

Without ``--model`` the model embedded in the binary is used (rebuild it after
retraining). With ``--model`` the file is injected as ``model.onnx_base64``
into a temporary copy of the config, so a fresh model can be checked before
it is embedded. Exit status 1 when a planted pattern is missing.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from augur_tools.sim import synthetic

#: (description, feature, predicate(user, headers), expected on-rate range).
CHECKS = (
    ("hd_images off on mobile/tablet", "hd_images", lambda u, h: u.device in ("mobile", "tablet"), (0.0, 0.1)),
    ("hd_images off on desktop in apac/latam", "hd_images",
     lambda u, h: u.device == "desktop" and u.region in ("apac", "latam"), (0.0, 0.1)),
    ("hd_images on on desktop elsewhere", "hd_images",
     lambda u, h: u.device == "desktop" and u.region not in ("apac", "latam"), (0.9, 1.0)),
    ("search_v2 off for bots", "search_v2", lambda u, h: u.device == "bot", (0.0, 0.0)),
    ("search_v2 on for humans", "search_v2", lambda u, h: u.device != "bot", (0.9, 1.0)),
    ("one_click_pay off for accounts < 30 days", "one_click_pay", lambda u, h: u.tenure_days < 30, (0.0, 0.1)),
    ("new_checkout off for tablet writes", "new_checkout",
     lambda u, h: u.device == "tablet" and h[":method"] == "POST", (0.0, 0.1)),
    ("new_checkout on otherwise", "new_checkout",
     lambda u, h: not (u.device == "tablet" and h[":method"] == "POST"), (0.9, 1.0)),
    ("recommendations off below 15 sessions", "recommendations", lambda u, h: u.sessions_30d < 15, (0.0, 0.1)),
    ("recommendations on from 20 sessions", "recommendations", lambda u, h: u.sessions_30d >= 20, (0.9, 1.0)),
    ("dark_mode only for beta", "dark_mode", lambda u, h: u.tier != "beta", (0.0, 0.0)),
)


def decide(augur: str, config: str, requests: list[dict]) -> list[dict]:
    stdin = "".join(json.dumps(h) + "\n" for h in requests)
    p = subprocess.run([augur, "decide", "--config", config], input=stdin, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.exit(f"augur decide failed: {p.stderr.strip()}")
    records = [json.loads(line) for line in p.stdout.splitlines()]
    if len(records) != len(requests):
        sys.exit(f"augur decide returned {len(records)} records for {len(requests)} requests")
    return records


def rate(rows: list[tuple], feature: str) -> tuple[float | None, int]:
    on = [r["features"][feature]["on"] for _, _, r in rows]
    return (sum(on) / len(on) if on else None), len(on)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--augur", default="target/release/augur")
    ap.add_argument("--config", default="envoy/augur-demo.json")
    ap.add_argument("--model", help="check this .onnx instead of the embedded model")
    ap.add_argument("--n", type=int, default=300, help="requests to send")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    users = synthetic.make_users(args.users, args.seed)
    reqs = list(synthetic.traffic(users, args.n, random.Random(args.seed + 1)))

    config = args.config
    tmp = None
    if args.model:
        cfg = json.loads(Path(args.config).read_text())
        cfg.setdefault("model", {})["onnx_base64"] = base64.b64encode(Path(args.model).read_bytes()).decode()
        cfg["model"].pop("version", None)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
            json.dump(cfg, tmp)
        config = tmp.name
    try:
        records = decide(args.augur, config, [h for _, h in reqs])
    finally:
        if tmp:
            Path(tmp.name).unlink()

    features = list(records[0]["features"])
    new = [(u, h, r) for (u, h), r in zip(reqs, records) if r["stack"] == "new"]
    failed = sum(not r["model_ok"] for r in records)
    print(f"{len(records)} requests, {len(new)} on the new stack, model {records[0]['model']}, "
          f"model failures {failed}")

    groups = [(d, lambda u, h, d=d: u.device == d) for d in synthetic.DEVICES]
    groups += [(t, lambda u, h, t=t: u.tier == t) for t in ("beta", "standard")]
    groups += [("all", lambda u, h: True)]
    sub = {g: [row for row in new if pred(row[0], row[1])] for g, pred in groups}
    w = max(22, max(len(f) for f in features) + 2)
    print(f"\n{'on-rate (stack=new)':<{w}}" + "".join(f"{f'{g} (n={len(sub[g])})':>18}" for g, _ in groups))
    for f in features:
        cells = []
        for g, _ in groups:
            r, n = rate(sub[g], f)
            cells.append(f"{'-' if r is None else f'{100 * r:.0f}%':>18}")
        print(f"{f:<{w}}" + "".join(cells))

    print("\noff reasons (stack=new)")
    for f in features:
        reasons = collections.Counter(r["features"][f]["reason"] for _, _, r in new if not r["features"][f]["on"])
        print(f"  {f:<{w}}" + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "-"))

    print("\nplanted patterns (stack=new)")
    missing = 0
    for label, feature, pred, (lo, hi) in CHECKS:
        rows = [row for row in new if pred(row[0], row[1])]
        r, n = rate(rows, feature)
        if r is None:
            verdict = "n/a (no requests)"
        elif lo <= r <= hi:
            verdict = "ok"
        else:
            verdict = f"MISSING (expected {100 * lo:.0f}-{100 * hi:.0f}%)"
            missing += 1
        shown = "-" if r is None else f"{100 * r:.0f}%"
        print(f"  {label:<44} on {shown:>5} of {n:>4}  {verdict}")

    print()
    for f in features:
        r, n = rate(new, f)
        if r is not None and n >= 20 and r in (0.0, 1.0):
            print(f"note: {f} is {'always on' if r else 'always off'} on the new stack ({n} requests)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
