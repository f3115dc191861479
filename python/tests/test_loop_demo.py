"""The loop demo's own measuring stick: planted worlds and the static baseline.

`make loop-demo` judges the loop against a static rollout that the native
library decides offline (`loop_demo.static_baseline`) instead of a second live
run; this checks that the offline baseline counts exactly what a live static
run through Envoy counts, on the world with AND-segments and an `all` segment.
"""

import argparse
import time

import pytest

from augur_tools.demos import loop_demo
from augur_tools.sim import planted


def test_segments_and_worlds():
    req = planted.attributes({"user-agent": "Mozilla/5.0 (iPhone; Mobile)", "x-geo-region": "EU"},
                             "/api/checkout/pay", "POST")
    assert planted.in_segment("mobile&write", req)
    assert planted.in_segment("eu", req) and planted.in_segment("all", req)
    assert not planted.in_segment("mobile&static", req)
    assert not planted.in_segment("tablet&write", req)
    with pytest.raises(ValueError, match="unknown world 'nope': one of demo, tangled"):
        planted.effects("nope")
    for world in planted.WORLDS.values():
        for kind, feature, segment, effect, p in world:
            assert kind in ("harm", "benefit") and feature in loop_demo.FEATURES and 0 < p <= 1
            planted.in_segment(segment, req)  # every segment name is known


def test_offline_static_baseline_equals_a_live_static_run(tmp_path):
    reqs = loop_demo.build_requests(500, 3, 300)
    plugin = loop_demo.static_plugin(50, "baseline-test")
    args = argparse.Namespace(threads=8, rate=250.0, retrain_at=[], run_timeout=30.0, retrain_timeout=10.0,
                              budget_end=time.monotonic() + 60)
    live = loop_demo.run("static", plugin, reqs, args, tmp_path / "live", "tangled")
    assert not live["failures"]
    live_tally = loop_demo.tally(live)
    assert live_tally["lost"] == 0
    offline = loop_demo.static_baseline(plugin, reqs, range(len(reqs)), planted.effects("tangled"), tmp_path)
    assert live_tally["new_requests"] == offline["new_requests"] > 100
    assert live_tally["harmed"] == offline["harmed"] > 0
    assert live_tally["benefit"] == offline["benefit"] > 0
    assert live_tally["pairs"] == offline["pairs"]
    # Record times (time to block, push lag) are seconds since the run started.
    assert all(0 <= loop_demo.record_time(r, live["t_start"]) < 60 for r in live["records"])
    mech = loop_demo.mechanics(live, reqs, planted.effects("tangled"))
    assert mech["blocked_share"] == {} and all(t is None for t in mech["time_to_block"].values())


def test_the_ceiling_is_the_best_exact_policy():
    effects = (("harm", "a", "s1", "status:503", 0.5), ("benefit", "a", "s2", "engage", 0.3),
               ("harm", "b", "all", "status:503", 0.03))
    truths = [
        {"harms": ["a@s1", "b@all"], "benefits": ["a@s2"]},  # a's harm and benefit overlap here
        {"harms": ["b@all"], "benefits": []},
        {"harms": ["b@all"], "benefits": ["a@s2"]},
        {"harms": ["a@s1", "b@all"], "benefits": []},
    ]
    c = loop_demo.ceiling(truths, effects)
    # Every harm blocked: nothing harmed, the benefit in the overlap lost.
    assert c["all"] == (100.0, 50.0)
    # 95% of the benefit (1.9 of 2) needs a 90% share of the overlap left on: 0.9 of 4 requests harmed.
    x, y, kept = c["best"]
    assert (round(x, 6), y, kept) == (77.5, 95.0, ["a@s1 & s2 (90%)"])
    assert loop_demo.ceiling(truths, effects, min_benefit=40)["best"] == (100.0, 50.0, [])
    # A request where two overlaps meet regains two benefits for one harmed request: it goes first.
    effects2 = effects + (("harm", "c", "s3", "status:503", 0.5), ("benefit", "c", "s4", "engage", 0.3))
    truths2 = truths + [{"harms": ["a@s1", "c@s3"], "benefits": ["a@s2", "c@s4"]}]
    x, y, kept = loop_demo.ceiling(truths2, effects2, min_benefit=75)["best"]
    assert kept == ["a@s1 & s2 + c@s3 & s4 (100%)"] and y == 75 and round(x, 6) == 80.0
    assert loop_demo.ceiling([{"harms": [], "benefits": []}], effects) is None


def test_the_ceiling_of_the_shipped_worlds(tmp_path):
    # What `make loop-demo` prints under each run: the demo world leaves a perfect policy every benefit;
    # in the tangled one, harms overlap benefits, so blocking them all gives up more than 5% of it.
    reqs = loop_demo.build_requests(4000, 7, 4000)
    plugin = loop_demo.static_plugin(50, "ceiling-test")
    demo = loop_demo.static_baseline(plugin, reqs, range(len(reqs)), planted.effects("demo"), tmp_path)["ceiling"]
    assert demo["all"] == (100.0, 100.0)
    tangled = loop_demo.static_baseline(plugin, reqs, range(len(reqs)), planted.effects("tangled"), tmp_path)
    c = tangled["ceiling"]
    assert c["all"][0] == 100.0 and c["all"][1] < 95
    bx, by, kept = c["best"]
    assert 90 < bx < 100 and by == 95 and any("recommendations@eu & sessions_high" in k for k in kept), c
