"""One statistic: the filter's rollback test (`augur stat`, the same library as
the wasm module) and the offline one (python/augur_tools/augur_stats.py, SciPy) agree."""

import json
import random
import subprocess

import pytest

from augur_tools import augur_stats
from augur_tools.envoy import harness


def ask(queries):
    p = subprocess.run([str(harness.AUGUR_CLI), "stat"], input="\n".join(json.dumps(q) for q in queries),
                       capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_harm_no_harm_and_ratio_evidence_agree_with_scipy():
    rng = random.Random(11)
    queries = []
    for _ in range(300):
        k = rng.choice([0, 1, 3, 10, 40, 200, 1500, 20000])
        queries.append({"test": "harm", "bad_on": rng.randint(0, k), "bad": k, "pi": rng.choice([0.02, 0.3, 0.5, 0.9])})
        queries.append({"test": "no_harm", "bad_on": rng.randint(0, k), "bad": k, "pi": rng.choice([0.05, 0.2, 0.5]),
                        "rho": rng.choice([1.5, 2.0, 3.0])})
        n = rng.choice([0, 1, 25, 400, 10000, 200000])
        queries.append({"test": "ratio", "x": rng.randint(0, n), "n": n, "p0": rng.choice([0.1, 0.5, 0.7])})
    answers = ask(queries)
    assert len(answers) == len(queries)
    for q, a in zip(queries, answers):
        if q["test"] == "harm":
            want = augur_stats.ln_harm(q["bad_on"], q["bad"], q["pi"])
        elif q["test"] == "no_harm":
            want = augur_stats.ln_no_harm(q["bad_on"], q["bad"], q["pi"], q["rho"])
        else:
            want = augur_stats.ln_ratio(q["x"], q["n"], q["p0"])
        # Where events sit far below the arm's share (ln M ≪ 0, no evidence of
        # harm) SciPy's tail underflows and the twin uses Laplace's approximation.
        rel = 1e-6 if want > -5 else 1e-3
        assert a["ln_m"] == pytest.approx(want, rel=rel, abs=1e-6), q


def test_alarm_levels_are_the_same_budget_split():
    for alpha, features in ((0.01, 5), (0.05, 1), (0.001, 40)):
        (got,) = ask([{"test": "levels", "alpha": alpha, "features": features}])
        want = augur_stats.levels(alpha, features)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), k


def test_rollback_defaults_are_the_filters():
    (got,) = ask([{"test": "defaults"}])
    assert got == augur_stats.DEFAULTS
    (default_rho,) = ask([{"test": "no_harm", "bad_on": 3, "bad": 200, "pi": 0.05}])
    assert default_rho["ln_m"] == pytest.approx(augur_stats.ln_no_harm(3, 200, 0.05), rel=1e-12)


def test_bad_queries_are_refused_with_the_field():
    p = subprocess.run([str(harness.AUGUR_CLI), "stat"], input='{"test": "harm", "bad": 3}\n',
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 1 and 'needs a count "bad_on"' in p.stderr, p.stderr
