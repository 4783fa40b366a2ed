"""crocodile rollout: atomic rewrite, previous file kept, two-step label move on a live server,
and the move takes effect through the router without a restart."""
import os
import shutil
import time

import pytest
from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus

from serving_test_data import CANARY_VERSION, MODEL_NAME, STABLE_VERSION, candidates
from crocodile.cli import main as crocodile_main
from crocodile.errors import UserError
from crocodile.serving.client import ScoringClient
from crocodile.serving.model_config import read_model_config
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.rollout import ServerClient, rollout

CONTEXT = {"user_segment": "s", "user_region": "r"}


@pytest.fixture
def three_versions(model_base, tmp_path):
    """A copy of the model base with a third version (a copy of version 1's SavedModel)."""
    base = tmp_path / MODEL_NAME
    shutil.copytree(model_base, base)
    shutil.copytree(base / str(STABLE_VERSION), base / "3")
    return str(base)


def labels_of(path):
    model = read_model_config(path).model_config_list.config[0]
    return dict(model.version_labels), sorted(model.model_version_policy.specific.versions)


def test_rollout_without_server_writes_atomically_and_keeps_previous(tmp_path, three_versions):
    from crocodile.serving.model_config import write_model_config
    path = str(tmp_path / "models.pbtxt")
    write_model_config(path, MODEL_NAME, three_versions, STABLE_VERSION, CANARY_VERSION)
    before = open(path).read()
    assert crocodile_main(["rollout", "--config", path, "--stable", "2", "--canary", "3"]) == 0
    assert labels_of(path) == ({"stable": 2, "canary": 3}, [2, 3])
    assert open(path + ".prev").read() == before
    assert sorted(os.listdir(tmp_path)) == ["crocodile", "models.pbtxt", "models.pbtxt.prev"]  # no temp files left
    with pytest.raises(UserError, match=r"no SavedModel for version\(s\) \[8\]"):
        rollout(path, 2, 8)
    assert labels_of(path) == ({"stable": 2, "canary": 3}, [2, 3])  # a refused rollout changes nothing


def test_label_move_takes_effect_without_restart(tmp_path, three_versions, start_model_server, start_router):
    from crocodile.serving.model_config import write_model_config
    path = str(tmp_path / "models.pbtxt")
    write_model_config(path, MODEL_NAME, three_versions, STABLE_VERSION, CANARY_VERSION)
    # As in production (docker/): labels at start-up need the flag; a MOVE to an unloaded version
    # is refused even with it, so the rollout must still load first.
    backend, core = start_model_server(path, allow_unavailable_labels=True)
    # allow_client_version: the last check asks for the stable label explicitly.
    everyone_canary = CanaryPolicy.from_dict({"experiment": "r", "salt": "s", "default_canary_share": 1.0,
                                              "allow_client_version": True})
    port, _ = start_router(backend, everyone_canary)
    client = ScoringClient(f"127.0.0.1:{port}")
    assert client.regress(0, "u1", candidates(2), context=CONTEXT).version == CANARY_VERSION
    steps = []
    server = ServerClient(f"127.0.0.1:{backend}")
    rollout(path, stable=CANARY_VERSION, canary=3, server=server, log=steps.append)
    server.close()
    assert [s.split(":")[0] for s in steps] == ["load", "move labels", "prune"]
    assert "versions [1, 2, 3]" in steps[0]  # the new version was loaded before any label moved
    result = client.regress(0, "u1", candidates(2), context=CONTEXT)
    assert (result.arm, result.version) == ("canary", 3)
    assert client.regress(0, "u1", candidates(2), context=CONTEXT, label="stable").version == CANARY_VERSION
    deadline = time.monotonic() + 30  # the prune's unload runs after the reload returned, as in TF Serving
    while core.available_versions(MODEL_NAME) != [CANARY_VERSION, 3] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert core.available_versions(MODEL_NAME) == [CANARY_VERSION, 3]  # old stable pruned
    assert core.version_states(MODEL_NAME, STABLE_VERSION)[0][1] == ModelVersionStatus.END  # unloaded
    assert labels_of(path) == ({"stable": CANARY_VERSION, "canary": 3}, [CANARY_VERSION, 3])
    client.close()
