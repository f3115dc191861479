"""The closed loop on a simulated clock (`augur simulate`, the filter's own
runtime and rollback): reproducible to the request, and in the demo world it
blocks every planted harm in its own cell, blocks nothing harmless, and keeps
the static rollout's benefits it does not have to give up."""

from augur_tools.demos import loop_demo, loop_sim
from augur_tools.sim import planted


def run(tmp_path, world, seed, draws, requests):
    effects = planted.effects(world)
    reqs = loop_demo.build_requests(requests, seed, 4000)
    salt = f"test-{seed}"
    loop = loop_sim.simulate(loop_demo.loop_plugin(50, salt), reqs, effects, 200, tmp_path / str(draws), draws)
    loop["tally"] = dict(loop_demo.exposure(loop["truth"]), lost=0)
    static = loop_demo.static_baseline(loop_demo.static_plugin(50, salt), reqs, range(len(reqs)), effects,
                                       tmp_path / "static")
    return loop, loop_demo.judge(world, seed, loop, static, reqs, effects, len(reqs))


def test_a_simulated_loop_is_reproducible_and_blocks_the_demo_harms_in_their_cells(tmp_path):
    loop, summary = run(tmp_path, "demo", 7, 7000, 22000)
    again, _ = run(tmp_path, "demo", 7, 7000, 22000)
    assert [r["decision"]["features"] for r in loop["records"]] == \
        [r["decision"]["features"] for r in again["records"]], "same draws, same decisions"
    assert loop["events"] == again["events"]

    mech = summary["mech"]
    assert all(t is not None and t < 40 for t in mech["time_to_block"].values()), mech["time_to_block"]
    assert mech["false_blocks"] == [] and mech["reverts"] == [] and mech["srm"] == []
    assert mech["overblocking_all"] < 0.2, mech["overblocking"]
    assert summary["x"] >= 85 and summary["y"] >= 88, (summary["x"], summary["y"])
    # Other draws: other exploration, the same harms found.
    _, other = run(tmp_path, "demo", 7, 7001, 22000)
    assert all(t is not None for t in other["mech"]["time_to_block"].values())
    assert other["mech"]["false_blocks"] == []
