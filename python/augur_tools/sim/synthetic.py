"""Seeded synthetic users and requests for augur, with planted "true" impacts.

Shared by the default-model trainer (``python/augur_tools/loop/train.py``), the demo traffic
sender and the closed-loop simulation, so that all three agree on what the
world looks like. Importing this module has no side effects and it needs only
the standard library.

What it does *not* do is encode requests: the feature vector is defined only in
Rust (``src/profile/mod.rs``) and obtained with ``augur encode``. Everything here is
expressed in terms of users and HTTP request headers.

Typical use::

    import random
    from augur_tools.sim.synthetic import make_users, request_headers, true_impacts, DEMO_FEATURES

    users = make_users(1000, seed=7)
    rng = random.Random(7)
    for user, headers in traffic(users, 10, rng):
        truth = true_impacts(user, headers)   # {feature: (perf, err, engagement, security)}

All randomness comes from an explicit seed or ``random.Random`` so every
dataset is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "BETA_SHARE",
    "DEMO_FEATURES",
    "DEVICES",
    "DEVICE_SHARES",
    "HISTORY_HEADERS",
    "IMPACTS",
    "NEW_ACCOUNT_DAYS",
    "REGIONS",
    "REGION_SHARES",
    "USER_AGENTS",
    "User",
    "make_users",
    "request_headers",
    "traffic",
    "true_impacts",
]

# --------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------

#: Device classes, as reported by ``augur`` in decision records.
DEVICES = ("mobile", "tablet", "desktop", "bot")
#: Share of users per device class (same order as DEVICES).
DEVICE_SHARES = (0.50, 0.10, 0.35, 0.05)

#: Regions sent in ``x-geo-region``. The first four are the demo config's
#: ``profile.locations``; "other" is deliberately not one of them.
REGIONS = ("us", "eu", "apac", "latam", "other")
REGION_SHARES = (0.35, 0.30, 0.18, 0.12, 0.05)

#: Share of (human) users in the "beta" tier; everyone else is "standard".
BETA_SHARE = 0.10

#: Accounts younger than this many days are "new" (see ``one_click_pay``).
NEW_ACCOUNT_DAYS = 30
#: Share of human users whose account is new (< 30 days).
NEW_ACCOUNT_SHARE = 0.12
#: Share of human users whose account is 30-89 days old.
RECENT_ACCOUNT_SHARE = 0.10

#: History headers, matching ``profile.history`` in ``envoy/augur-demo.json``
#: (in that order: sessions /50, purchases /20, tenure /365, errors /10).
HISTORY_HEADERS = {
    "sessions_30d": "x-user-sessions-30d",
    "purchases_90d": "x-user-purchases-90d",
    "tenure_days": "x-user-tenure-days",
    "errors_7d": "x-user-errors-7d",
}
USER_HEADER = "x-user-id"
REGION_HEADER = "x-geo-region"
TIER_HEADER = "x-user-tier"

#: Realistic User-Agent strings per device class. Each one is classified by
#: ``augur`` (``classify_device`` in src/profile/mod.rs) as its key; the trainer
#: checks this on every run.
USER_AGENTS: dict[str, tuple[str, ...]] = {
    "mobile": (
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"),
        ("Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/123.0.0.0 Mobile Safari/537.36"),
    ),
    "tablet": (
        # iPads say "Mobile/15E148" too; augur checks for "iPad" first.
        ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"),
        # Android tablets: no "Mobile" token.
        ("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
        ("Mozilla/5.0 (Linux; Android 13; Lenovo TB-X606F) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"),
    ),
    "desktop": (
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"),
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    "bot": (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        # Googlebot smartphone: says "Android" and "Mobile" but is a bot.
        ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.6367.118 Mobile Safari/537.36 "
        "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    ),
}


@dataclass(frozen=True)
class User:
    """One synthetic user. A user keeps one device (and User-Agent) and region."""

    id: str
    device: str  # one of DEVICES
    region: str  # one of REGIONS
    tier: str  # "beta" or "standard"
    sessions_30d: int
    purchases_90d: int
    tenure_days: int
    errors_7d: int
    user_agent: str

    @property
    def is_new_account(self) -> bool:
        return self.tenure_days < NEW_ACCOUNT_DAYS

    def history_headers(self) -> dict[str, str]:
        """The four trusted history headers, as strings."""
        return {header: str(getattr(self, attr)) for attr, header in HISTORY_HEADERS.items()}


def _poisson(rng: random.Random, lam: float) -> int:
    """Poisson sample (Knuth for small means, rounded normal above 50)."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _make_user(i: int, rng: random.Random) -> User:
    device = rng.choices(DEVICES, DEVICE_SHARES)[0]
    region = rng.choices(REGIONS, REGION_SHARES)[0]
    user_agent = rng.choice(USER_AGENTS[device])

    if device == "bot":
        # Crawlers: many "sessions", never buy, no tier, error-prone.
        return User(
            id=f"u{i:05d}",
            device=device,
            region=region,
            tier="standard",
            sessions_30d=rng.randint(20, 300),
            purchases_90d=0,
            tenure_days=rng.randint(0, 1000),
            errors_7d=_poisson(rng, 3.0),
            user_agent=user_agent,
        )

    # A latent "activity" drives sessions and purchases, so they correlate.
    activity = rng.gauss(0.0, 1.0)
    r = rng.random()
    if r < NEW_ACCOUNT_SHARE:
        tenure = rng.randint(0, NEW_ACCOUNT_DAYS - 1)
    elif r < NEW_ACCOUNT_SHARE + RECENT_ACCOUNT_SHARE:
        # Recent but not new: keeps both sides of the 30-day line well populated.
        tenure = rng.randint(NEW_ACCOUNT_DAYS, 89)
    else:
        # Established: median ~14 months, long tail of multi-year accounts.
        tenure = min(3000, max(90, round(rng.lognormvariate(math.log(420), 0.8))))
    ramp = 0.5 if tenure < NEW_ACCOUNT_DAYS else 1.0  # new accounts are still ramping up
    median_sessions = 14.0 * ramp * (1.15 if device == "desktop" else 1.0)
    sessions = min(200, round(median_sessions * math.exp(0.8 * activity)))
    purchase_rate = 0.16 * math.exp(0.3 * rng.gauss(0.0, 1.0)) * (0.5 if tenure < NEW_ACCOUNT_DAYS else 1.0)
    purchases = min(60, _poisson(rng, purchase_rate * sessions))
    error_rate = 0.2 + 0.02 * sessions + (0.3 if device in ("mobile", "tablet") else 0.0)
    errors = min(50, _poisson(rng, error_rate))
    tier = "beta" if rng.random() < BETA_SHARE else "standard"

    return User(
        id=f"u{i:05d}",
        device=device,
        region=region,
        tier=tier,
        sessions_30d=sessions,
        purchases_90d=purchases,
        tenure_days=tenure,
        errors_7d=errors,
        user_agent=user_agent,
    )


def make_users(n: int, seed: int) -> list[User]:
    """``n`` users with ids ``u00000``… drawn deterministically from ``seed``.

    Devices: ~50% mobile, 10% tablet, 35% desktop, 5% bot. Regions: us/eu/apac/
    latam plus ~5% "other". ~10% of humans are "beta". ~12% of humans have an
    account younger than 30 days, ~10% one of 30-89 days, the rest older. Sessions (median ~14/30 days) and purchases
    share a latent activity level; new accounts and bots are lighter buyers.
    """
    rng = random.Random(seed)
    return [_make_user(i, rng) for i in range(n)]


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------

_SEARCH_TERMS = ("shoes", "running+shoes", "laptop", "usb-c+cable", "coffee", "desk+lamp", "headphones", "gift")

# (kind, weight) for humans and for bots.
_HUMAN_PATHS = (("checkout", 0.20), ("search", 0.22), ("profile", 0.10), ("static", 0.33), ("root", 0.15))
_BOT_PATHS = (("checkout", 0.0), ("search", 0.45), ("profile", 0.05), ("static", 0.20), ("root", 0.30))
# Probability that a request of this kind is a POST (humans only).
_POST_SHARE = {"checkout": 0.75, "search": 0.03, "profile": 0.40, "static": 0.0, "root": 0.0}


def _path(kind: str, method: str, rng: random.Random) -> str:
    if kind == "checkout":
        if method == "POST":
            return rng.choice(("/api/checkout/pay", "/api/checkout/cart/items", "/api/checkout/confirm"))
        return rng.choice(("/api/checkout/cart", "/api/checkout/shipping", "/api/checkout/summary"))
    if kind == "search":
        q = rng.choice(_SEARCH_TERMS)
        return f"/api/search?q={q}" + (f"&page={rng.randint(2, 5)}" if rng.random() < 0.2 else "")
    if kind == "profile":
        return "/api/profile"
    if kind == "static":
        return rng.choice(("/static/app.js", "/static/app.css", "/static/img/hero.webp"))
    return "/"


def _content_length(kind: str, rng: random.Random) -> int:
    if kind == "profile":
        # Mostly small JSON, sometimes an avatar upload.
        if rng.random() < 0.1:
            return min(5_000_000, round(rng.lognormvariate(math.log(400_000), 0.8)))
        return round(rng.lognormvariate(math.log(1_500), 0.6))
    return max(2, round(rng.lognormvariate(math.log(500), 0.7)))


def request_headers(user: User, rng: random.Random) -> dict[str, str]:
    """One request from ``user``: a dict of lowercase header name → string value.

    Includes the pseudo-headers ``:method`` and ``:path``, identity, device
    (User-Agent), region, tier, the four history headers and, for writes,
    ``content-length``. The shape is what ``augur encode``/``decide`` read
    (one JSON object per line) and what the demo sender puts on the wire.
    About 20% of human requests are POSTs, ~3/4 of them to /api/checkout;
    bots only GET.
    """
    is_bot = user.device == "bot"
    kinds, weights = zip(*(_BOT_PATHS if is_bot else _HUMAN_PATHS))
    kind = rng.choices(kinds, weights)[0]
    method = "POST" if (not is_bot and rng.random() < _POST_SHARE[kind]) else "GET"

    headers = {
        ":method": method,
        ":path": _path(kind, method, rng),
        USER_HEADER: user.id,
        "user-agent": user.user_agent,
        REGION_HEADER: user.region,
        TIER_HEADER: user.tier,
    }
    headers.update(user.history_headers())
    if method == "POST":
        headers["content-length"] = str(_content_length(kind, rng))
    return headers


def traffic(
    users: list[User], n: int, rng: random.Random, by_activity: bool = False
) -> Iterator[tuple[User, dict[str, str]]]:
    """``n`` requests as ``(user, headers)``.

    Users are picked uniformly, or in proportion to ``1 + sessions_30d`` when
    ``by_activity`` (heavier users send more requests, like real traffic).
    """
    weights = [1 + u.sessions_30d for u in users] if by_activity else None
    for _ in range(n):
        user = rng.choices(users, weights)[0] if weights else rng.choice(users)
        yield user, request_headers(user, rng)


# --------------------------------------------------------------------------
# Planted truth
# --------------------------------------------------------------------------

#: Features the default model scores, in model output order.
DEMO_FEATURES = ["new_checkout", "one_click_pay", "search_v2", "recommendations", "hd_images"]
#: Impact order per feature (same as the model output and `augur schema`).
IMPACTS = ("performance_cost", "error_risk", "engagement", "security_risk")

Impact = tuple[float, float, float, float]


def true_impacts(user: User, headers: Mapping[str, str]) -> dict[str, Impact]:
    """The planted, noise-free impact of each demo feature on one request.

    Returns ``{feature: (performance_cost, error_risk, engagement, security_risk)}``
    for every name in DEMO_FEATURES, all in [0, 1]:

    - new_checkout: perf 0.2, error 0.05 (0.45 for tablet users doing a write),
      engagement 0.55 (+0.2 with ≥5 purchases in 90 days), security 0.1.
    - one_click_pay: perf 0.1, error 0.1, engagement 0.7, security 0.7 for
      accounts younger than 30 days else 0.1.
    - search_v2: perf 0.3, error 0.05, engagement 0.4 + 0.4·min(sessions/50, 1),
      security 0.8 for bots else 0.05.
    - recommendations: perf 0.4, error 0.05, engagement 0.15 + 0.75·min(sessions/50, 1),
      security 0.05.
    - hd_images: perf 0.85 on mobile/tablet, else 0.75 in apac/latam, else 0.2;
      error 0.02, engagement 0.5, security 0.0.
    """
    is_write = headers.get(":method", "GET").upper() in ("POST", "PUT", "PATCH", "DELETE")
    sessions = min(user.sessions_30d / 50.0, 1.0)

    checkout_err = 0.45 if (user.device == "tablet" and is_write) else 0.05
    checkout_eng = 0.55 + (0.2 if user.purchases_90d >= 5 else 0.0)

    pay_sec = 0.7 if user.tenure_days < NEW_ACCOUNT_DAYS else 0.1

    search_sec = 0.8 if user.device == "bot" else 0.05

    if user.device in ("mobile", "tablet"):
        hd_perf = 0.85
    elif user.region in ("apac", "latam"):
        hd_perf = 0.75
    else:
        hd_perf = 0.2

    return {
        "new_checkout": (0.2, checkout_err, checkout_eng, 0.1),
        "one_click_pay": (0.1, 0.1, 0.7, pay_sec),
        "search_v2": (0.3, 0.05, 0.4 + 0.4 * sessions, search_sec),
        "recommendations": (0.4, 0.05, 0.15 + 0.75 * sessions, 0.05),
        "hd_images": (hd_perf, 0.02, 0.5, 0.0),
    }
