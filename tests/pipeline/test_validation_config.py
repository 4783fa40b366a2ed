"""Curated schema and Evaluator config, checked without running a pipeline."""
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from crocodile.model.features import WORLD_FEATURES
from crocodile.pipeline import evaluation, schema


def _frame(**overrides):
    frame = pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u4"], "item_id": ["i1", "i2", "i1", "i2"],
        "domain_id": [0, 1, 4, 0], "user_segment": ["s", "s", "t", "t"], "user_region": ["r"] * 4,
        "item_category": ["c1", "c2", "c1", "c2"], "price": [1.0, 2.5, 3.0, 4.0], "click": [0, 1, 0, 1],
        "position": [0, 1, 2, 3],
    })
    for key, value in overrides.items():
        if value is None:
            frame = frame.drop(columns=[key])
        else:
            frame[key] = value
    return frame


def _anomalies(frame, reference=None):
    """Anomalies of ``frame`` against the curated version of the schema inferred from ``reference``."""
    inferred = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(
        _frame() if reference is None else reference))
    curated = schema.curate_schema(inferred, WORLD_FEATURES)
    anomalies = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(frame), curated)
    return schema.anomalies_summary({"train": anomalies})


def test_curated_schema_constraints():
    inferred = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(_frame(item_id=None)))
    curated = {f.name: f for f in schema.curate_schema(inferred, WORLD_FEATURES).feature}
    assert (curated["domain_id"].int_domain.min, curated["domain_id"].int_domain.max) == (0, 4)
    assert (curated["click"].int_domain.min, curated["click"].int_domain.max) == (0, 1)
    # A column absent from the inferred schema is added, typed, and required in every row.
    assert curated["item_id"].type == schema_pb2.BYTES
    for name in ("user_id", "item_id", "domain_id", "click", "price", "user_segment"):
        assert curated[name].presence.min_fraction == 1.0, name
    # Categorical features accept unseen values; optional log columns stay optional.
    assert not curated["user_segment"].HasField("domain")
    assert curated["position"].presence.min_fraction == 0.0 and not curated["position"].HasField("shape")


def test_clean_rows_have_no_anomalies():
    assert _anomalies(_frame(user_segment=["new", "s", "t", "x"])) == []


def test_optional_log_columns_may_be_missing():
    assert _anomalies(_frame(position=None)) == []


def test_each_defect_is_named():
    assert any("'item_id'" in line for line in _anomalies(_frame(item_id=None)))
    assert any("'click'" in line and "2" in line for line in _anomalies(_frame(click=[0, 2, 0, 1])))
    assert any("'domain_id'" in line and "5" in line for line in _anomalies(_frame(domain_id=[0, 5, 1, 1])))
    assert any("'domain_id'" in line for line in _anomalies(_frame(domain_id=[-1, 0, 1, 1])))


def test_eval_config_reports_metrics_and_gates_nothing():
    config = evaluation.build_eval_config()
    (spec,) = config.metrics_specs
    assert {m.class_name for m in spec.metrics} >= {"AUC", "ExampleCount", "Calibration", "CalibrationPlot"}
    # The BlessingGate decides; a TFMA threshold would be a second, point-estimate gate.
    assert all(not m.threshold.ByteSize() and not m.per_slice_thresholds for m in spec.metrics)
    assert not config.model_specs[0].is_baseline and len(config.model_specs) == 1
    assert [s.feature_keys for s in config.slicing_specs] == [[], ["domain_id"]]
    assert config.model_specs[0].label_key == "click"
