"""Bad logs stop `crocodile pipeline run` before Transform, name the problem, and push nothing."""
import os

import numpy as np
import pytest
from tfx import v1 as tfx
from tfx.orchestration import metadata

from crocodile.cli import main

pytestmark = pytest.mark.slow

# In-process Beam: these runs stop after a few small components, and spawning Beam worker
# processes would cost more than the work itself.
IN_MEMORY_BEAM = ["--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]


def _drop_item_id(columns):
    del columns["item_id"]


def _click_of_two(columns):
    columns["click"] = np.asarray(columns["click"]).copy()
    columns["click"][17] = 2


def _unknown_domain(columns):
    columns["domain_id"] = np.asarray(columns["domain_id"]).copy()
    columns["domain_id"][:5] = 7  # WORLD_FEATURES has domains 0..4


@pytest.mark.parametrize("mutate, expected", [
    (_drop_item_id, "column 'item_id'"),
    (_click_of_two, "column 'click': Out-of-range values: Unexpectedly large value: 2"),
    (_unknown_domain, "column 'domain_id': Out-of-range values: Unexpectedly large value: 7"),
], ids=["missing-column", "non-binary-label", "unknown-domain"])
def test_bad_logs_stop_the_run_with_a_message_and_push_nothing(canonical_logs, tmp_path, capsys,
                                                               mutate, expected):
    data = canonical_logs(300, mutate=mutate)
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    code = main(["pipeline", "run", "--data", data, "--model", "mmoe", "--pipeline-root", root,
                 "--serving-dir", serving, "--train-steps", "2", *IN_MEMORY_BEAM])
    error = capsys.readouterr().err
    assert code == 2
    assert "the logs do not match the schema" in error and expected in error, error
    assert not os.path.exists(serving) or not os.listdir(serving)

    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(root, "metadata.sqlite"))
    with metadata.Metadata(config) as m:
        ran = {c.name.split(".", 1)[1] for c in m.store.get_contexts_by_type("node")
               if m.store.get_executions_by_context(c.id)}
    assert "ExampleValidator" in ran and "AnomaliesGate" in ran
    assert not ran & {"Transform", "Trainer", "Evaluator", "Pusher"}

