"""Live A/B through real loopback gRPC servers: the embedded model server and the canary router."""
import argparse
import json
from collections import Counter

import numpy as np
import pytest

from crocodile.serving.model_config import read_model_config, write_model_config
from crocodile.serving.model_server import build_server
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.router import Router, build_router_server, shutdown
from crocodile.serving.server_core import ServerCore
from crocodile.simulation import ab_scorers, abtest, abtest_cli, stats
from crocodile.simulation.ab_reference_models import save_world_ranker
from crocodile.simulation.world import World, WorldConfig

STABLE_VERSION, CANARY_VERSION = 1, 2
SHARES = {0: 0.5, 1: 0.3, 2: 0.7}  # domains 3 and 4 get the default share
POLICY_YAML = "experiment: live\nsalt: s\ndefault_canary_share: 0.5\ndomains: {0: 0.5, 1: 0.3, 2: 0.7}\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    world = World.create(WorldConfig(seed=4, num_users=500, num_items=300))
    world.save(str(root / "data" / "world"))
    base = root / "models" / "crocodile"
    save_world_ranker(world, str(base / str(STABLE_VERSION)), noise=4.0, seed=1)   # near-random
    save_world_ranker(world, str(base / str(CANARY_VERSION)), noise=0.0)           # the oracle ranking
    config = str(root / "model_config.pbtxt")
    write_model_config(config, "crocodile", str(base), STABLE_VERSION, CANARY_VERSION)
    core = ServerCore(allow_version_labels_for_unavailable_models=True)  # as TF Serving's flag: load, then label
    core.reload_config(read_model_config(config))
    model_server, model_port, _ = build_server(core, 0, host="127.0.0.1")
    model_server.start()
    (root / "policy.yaml").write_text(POLICY_YAML)
    policy = CanaryPolicy.load(str(root / "policy.yaml"))
    exposure_log = root / "exposure.jsonl"
    router = Router(f"127.0.0.1:{model_port}", policy, exposure_log=str(exposure_log))
    router_server, router_port = build_router_server(router, 0, host="127.0.0.1")
    router_server.start()
    yield {"root": root, "world": world, "base": base, "policy": policy, "target": f"127.0.0.1:{router_port}",
           "exposure_log": exposure_log}
    shutdown(router_server, router, grace_s=2.0)
    model_server.stop(0).wait()


def exposures(path, prefix):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["request_id"].startswith(prefix)]


@pytest.mark.slow
def test_live_arms_follow_the_policy_and_match_the_exposure_log(servers):
    world, policy = servers["world"], servers["policy"]
    models = ab_scorers.ModelPair(world, str(servers["base"] / "1"), str(servers["base"] / "2"))
    scorer = ab_scorers.LiveScorer(world, servers["target"], oracle_models=models)
    # Keep every request's live scores to compare with the in-process models.
    seen = []
    original = scorer.score

    def recording(user, domain, candidates, request_ids=None, oracle_rows=None):
        scored = original(user, domain, candidates, request_ids, oracle_rows)
        seen.append(scored)
        return scored

    scorer.score = recording
    result = abtest.simulate(world, scorer, 600, seed=31, chunk=200, progress=False)

    user_ids = world.user_features(result.user)["user_id"]
    expected = [policy.arm_for(d, u) == "canary" for d, u in zip(result.domain.tolist(), user_ids.tolist())]
    np.testing.assert_array_equal(result.canary, expected)
    np.testing.assert_array_equal(result.version, np.where(result.canary, CANARY_VERSION, STABLE_VERSION))
    # The router's model answered exactly what the arm's SavedModel scores in-process.
    for scored in seen:
        in_process = np.where(scored.canary[:, None], scored.canary_scores, scored.stable)
        np.testing.assert_allclose(scored.shown, in_process, rtol=1e-5, atol=1e-7)
    # Exposure counts per (domain, arm) equal the router's exposure log lines.
    logged = exposures(servers["exposure_log"], "ab31-")
    assert len(logged) == result.user.size
    ours = Counter(zip(result.domain.tolist(), np.where(result.canary, "canary", "stable").tolist()))
    assert Counter((r["domain"], r["arm"]) for r in logged) == ours
    assert {r["status"] for r in logged} == {"OK"}
    # Per-domain arm shares match the policy (users, no sample ratio mismatch).
    cells = result.cells()
    for d in range(world.num_domains):
        in_domain = cells.domain == d
        n_canary, n_stable = cells.canary[in_domain].sum(), (~cells.canary[in_domain]).sum()
        if n_canary + n_stable >= 20:
            assert stats.srm_pvalue(n_canary, n_stable, policy.share_for(d)) > stats.SRM_ALARM_P
    assert abtest.oracle_lifts(result)["overall"]["ctr"] > 0.3


@pytest.mark.slow
def test_live_cli_writes_a_report(servers, tmp_path):
    parser = argparse.ArgumentParser()
    abtest_cli.register(parser.add_subparsers())
    args = parser.parse_args(["abtest", "live", "--target", servers["target"], "--world", str(servers["root"] / "data"),
                              "--users", "150", "--report", str(tmp_path), "--policy",
                              str(servers["root"] / "policy.yaml"), "--seed", "32", "--quiet"])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["model_versions_seen"] == [STABLE_VERSION, CANARY_VERSION]
    assert report["oracle_overall_ctr_lift"] is None  # no in-process models given: no oracle
    assert len(exposures(servers["exposure_log"], "ab32-")) == 150
    assert "Per domain" in (tmp_path / "report.md").read_text()


def test_live_run_against_no_server_stops_with_the_grpc_status(servers):
    import socket
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scorer = ab_scorers.LiveScorer(servers["world"], f"127.0.0.1:{port}")
    with pytest.raises(abtest_cli.UserError, match="UNAVAILABLE"):
        abtest.simulate(servers["world"], scorer, 3, seed=33, progress=False)
