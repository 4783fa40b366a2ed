"""preprocessing_fn on small hand-checked data, through the real TFT analyzers (Beam)."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from crocodile.model.features import FeatureConfig, transformed_name
from crocodile.pipeline import transform_local
from crocodile.pipeline.preprocessing import feature_config_from_custom_config, vocab_sizes

CONFIG = FeatureConfig(
    categorical=("user_id", "item_id"), numeric=("price",), num_domains=3,
    vocab_frequency_threshold=10, num_oov_buckets=1,
)


def _logs(tmp_path):
    # "common"/"frequent_user" appear 12 times (kept); "rare"/"rare_user" 3 times (< 10: OOV).
    rows = []
    for i in range(12):
        rows.append(dict(user_id="frequent_user", item_id="common", price=float(i), domain_id=i % 3, click=i % 2))
    for i in range(3):
        rows.append(dict(user_id="rare_user", item_id="rare", price=100.0, domain_id=0, click=1))
    frame = pd.DataFrame(rows)
    (tmp_path / "logs").mkdir()
    frame.to_csv(tmp_path / "logs" / "part-00000.csv", index=False)
    return frame


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    frame = _logs(data_dir)
    result = transform_local.analyze_and_transform(
        str(data_dir), str(tmp_path_factory.mktemp("tf")), CONFIG, eval_fraction=0.0)
    return frame, result


def test_vocabulary_applies_frequency_threshold_and_oov_bucket(transformed):
    frame, result = transformed
    items = result.train[transformed_name("item_id")]
    raw = result.train_raw["item_id"].to_numpy()
    # Only "common" passes the threshold: vocabulary = ["common"], OOV bucket index 1.
    assert set(items[raw == "common"]) == {0}
    assert set(items[raw == "rare"]) == {1}
    assert vocab_sizes(result.tft_output, CONFIG) == {"user_id": 1 + 1, "item_id": 1 + 1}


def test_numeric_feature_is_z_score_of_log1p(transformed):
    frame, result = transformed
    logged = np.log1p(result.train_raw["price"].to_numpy())
    expected = (logged - logged.mean()) / logged.std()
    np.testing.assert_allclose(result.train[transformed_name("price")], expected, rtol=1e-4, atol=1e-5)


def test_domain_and_label_pass_through(transformed):
    _, result = transformed
    np.testing.assert_array_equal(result.train[transformed_name("domain_id")], result.train_raw["domain_id"])
    np.testing.assert_array_equal(result.train["click"], result.train_raw["click"])


def test_unknown_domain_fails_inside_the_transform_graph(transformed):
    _, result = transformed
    frame = result.train_raw.head(2).copy()
    frame["domain_id"] = [0, 3]  # 3 is outside [0, num_domains)
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id must be < 3"):
        transform_local.apply_transform(result.tft_output, frame, transform_local.raw_input_columns(CONFIG))


def test_serving_inputs_without_label_transform_features_only(transformed):
    _, result = transformed
    columns = dict(CONFIG.raw_feature_columns)  # no label, as at serving time
    arrays = transform_local.apply_transform(result.tft_output, result.train_raw.head(4), columns)
    assert "click" not in arrays
    assert set(arrays) == {transformed_name(k) for k in ("user_id", "item_id", "price", "domain_id")}


def test_feature_config_round_trips_through_custom_config():
    assert feature_config_from_custom_config({"feature_config": CONFIG.to_dict()}) == CONFIG
    assert feature_config_from_custom_config(None).num_domains == 5


def test_tfrecord_logs_keep_impression_keys_for_ground_truth_joins(tmp_path):
    frame = pd.DataFrame(dict(
        user_id=["u1", "u2"], item_id=["a", "b"], price=[1.0, 2.0], domain_id=[0, 2], click=[1, 0],
        request_id=["r7", "r8"], position=[0, 3]))
    (tmp_path / "logs").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / "logs" / "part-00000.tfrecord.gz"), "GZIP") as writer:
        for row in frame.itertuples(index=False):
            feature = {}
            for key, value in row._asdict().items():
                if isinstance(value, str):
                    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
                elif isinstance(value, float):
                    feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                else:
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    read = transform_local.read_logs(str(tmp_path), transform_local.raw_input_columns(CONFIG))
    assert list(read["request_id"]) == ["r7", "r8"]
    assert list(read["position"]) == [0, 3]
    assert list(read["user_id"]) == ["u1", "u2"]
