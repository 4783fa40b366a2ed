"""The serving export: signatures, predictions equal to the Keras network, no training-only state.

One small model is trained for a few steps (so its optimizer slots, metrics and the
covariance-loss path all exist) and exported once per module.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from crocodile.model import registry, training
from crocodile.model.features import DOMAIN_KEY, LABEL_KEY, FeatureConfig
from crocodile.pipeline import transform_local
from crocodile.pipeline.preprocessing import vocab_sizes
from crocodile.serving import export
from crocodile.serving.examples import make_example

pytestmark = pytest.mark.slow

SMALL_HPARAMS = {"embedding_dim": 4, "num_embedding_sets": 2, "expert_units": [8], "tower_units": [4],
                 "prior_embedding_dim": 4, "batch_size": 128, "epochs": 1}
# Op types that change state or train: none may run in a serving signature.
TRAINING_OP_TYPES = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
                     "ResourceApplyAdam", "ResourceApplyGradientDescent", "ResourceScatterAdd"}
TRAINING_NAME_PARTS = ("optimizer", "adam", "iteration", "auc", "bce", "tracker", "disentangle",
                       "covariance", "true_positives", "false_positives", "learning_rate")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, generate_world_logs):
    base = tmp_path_factory.mktemp("export")
    data_dir = generate_world_logs(str(base / "data"), impressions=3000, users=150, items=60)
    config = FeatureConfig.load(os.path.join(data_dir, "feature_config.json"))
    result = transform_local.analyze_and_transform(data_dir, str(base / "tft"), config)
    model = registry.build_model("crocodile", config, vocab_sizes(result.tft_output, config), SMALL_HPARAMS)
    training.fit(model, transform_local.make_dataset(result.train, 128), None, SMALL_HPARAMS,
                 epochs=1, steps_per_epoch=5, verbose=0)
    export_dir = export.export_serving_model(model.network, result.tft_output, config, str(base / "model"))
    return {"model": model, "result": result, "config": config, "dir": export_dir,
            "loaded": tf.saved_model.load(export_dir)}


def _raw_examples(exported, rows: int = 64):
    """Serialized tf.Examples of the first eval rows: model inputs only (no label, no log columns)."""
    frame = exported["result"].eval_raw.iloc[:rows]
    columns = list(exported["config"].raw_feature_columns)
    return [make_example({k: row[k] for k in columns}).SerializeToString()
            for row in frame.to_dict("records")]


def _network_probability(exported, rows: int = 64) -> np.ndarray:
    arrays = exported["result"].eval
    features = {k: tf.constant(v[:rows]) for k, v in arrays.items() if k.endswith("_xf")}
    return exported["model"].network(features, training=False)["probability"].numpy().reshape(-1)


def test_serving_default_and_regress_equal_the_keras_network(exported):
    examples = tf.constant(_raw_examples(exported))
    expected = _network_probability(exported)
    signatures = exported["loaded"].signatures
    served = signatures["serving_default"](examples=examples)["outputs"].numpy()
    regressed = signatures["regress"](inputs=examples)["outputs"].numpy()
    assert served.shape == regressed.shape == expected.shape == (64,)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(regressed, expected, atol=1e-5)
    assert 0.0 < served.min() and served.max() < 1.0


def test_signature_names_io_and_regress_method(exported):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported["dir"], "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = saved_model.meta_graphs[0].signature_def
    assert set(signature_defs) >= {"serving_default", "regress", "transform_features"}
    regress = signature_defs["regress"]
    assert regress.method_name == "tensorflow/serving/regress"
    assert list(regress.inputs) == ["inputs"] and regress.inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert list(regress.outputs) == ["outputs"] and regress.outputs["outputs"].dtype == tf.float32.as_datatype_enum
    assert list(signature_defs["serving_default"].inputs) == ["examples"]
    assert signature_defs["serving_default"].method_name == "tensorflow/serving/predict"
    transformed = exported["loaded"].signatures["transform_features"](
        examples=tf.constant(_raw_examples(exported, 4)))
    assert transformed[f"{DOMAIN_KEY}_xf"].dtype == tf.int64 and LABEL_KEY not in transformed


def test_example_list_with_context_bytes_concatenation_scores_like_full_examples(exported):
    # TF Serving's Regress builds each candidate's input as context bytes + candidate bytes
    # (proto merge); the signature must score that like the full example.
    config = exported["config"]
    row = exported["result"].eval_raw.iloc[0].to_dict()
    context_keys = {"user_id", "user_segment", "user_region", DOMAIN_KEY}
    context = make_example({k: row[k] for k in context_keys}).SerializeToString()
    candidate = make_example({k: row[k] for k in config.raw_feature_columns if k not in context_keys})
    full = make_example({k: row[k] for k in config.raw_feature_columns}).SerializeToString()
    regress = exported["loaded"].signatures["regress"]
    merged = regress(inputs=tf.constant([context + candidate.SerializeToString()]))["outputs"].numpy()
    np.testing.assert_allclose(merged, regress(inputs=tf.constant([full]))["outputs"].numpy(), atol=1e-7)


def test_model_server_scores_equal_the_export_in_process(exported, tmp_path, start_model_server, prediction_stub):
    # Through the embedded model server, Predict on full rows and Regress on context + candidates
    # (the Examples forwarded as the client's bytes, context bytes first) give the in-process scores.
    from serving_test_data import predict_request, regress_request

    from crocodile.serving.examples import merged_features
    from crocodile.serving.model_config import write_model_config
    base = tmp_path / "crocodile"
    base.mkdir()
    os.symlink(exported["dir"], base / "1")
    write_model_config(str(tmp_path / "config.pbtxt"), "crocodile", str(base), 1, 1)
    port, _ = start_model_server(str(tmp_path / "config.pbtxt"))
    stub = prediction_stub(port)
    columns = list(exported["config"].raw_feature_columns)
    rows = [{k: row[k] for k in columns} for row in exported["result"].eval_raw.iloc[:20].to_dict("records")]
    context_keys = ("user_id", "user_segment", "user_region", DOMAIN_KEY)
    context = {k: rows[0][k] for k in context_keys}
    items = [{k: v for k, v in row.items() if k not in context_keys} for row in rows]
    other_region = next(r["user_region"] for r in rows if r["user_region"] != context["user_region"])
    items[1]["user_region"] = other_region  # a feature in both context and candidate: the candidate's counts
    serving_default = exported["loaded"].signatures["serving_default"]

    def in_process(feature_rows):
        examples = tf.constant([make_example(f).SerializeToString() for f in feature_rows])
        return serving_default(examples=examples)["outputs"].numpy()

    predicted = tf.make_ndarray(stub.Predict(predict_request([make_example(r).SerializeToString() for r in rows]))
                                .outputs["outputs"])
    np.testing.assert_array_equal(predicted, in_process(rows))
    regressed = [r.value for r in stub.Regress(regress_request(context, items)).result.regressions]
    expected = in_process([merged_features(context, item) for item in items])
    np.testing.assert_array_equal(np.array(regressed, np.float32), expected)
    assert expected[1] != in_process([{**items[1], **context}])[0]  # the shared feature changes the score


def test_request_missing_a_model_input_is_rejected(exported):
    row = exported["result"].eval_raw.iloc[0].to_dict()
    columns = [k for k in exported["config"].raw_feature_columns if k != "item_id"]
    example = make_example({k: row[k] for k in columns}).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_id"):
        exported["loaded"].signatures["serving_default"](examples=tf.constant([example]))


def _signature_ops(concrete_function):
    graph_def = concrete_function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return nodes


def test_export_holds_the_network_and_nothing_training_only(exported):
    model, loaded = exported["model"], exported["loaded"]
    network_names = sorted(v.name for v in model.network.variables)
    training_only = [v.name for v in model.variables if v.name not in set(network_names)]
    training_only += [v.name for v in model.optimizer.variables]
    assert training_only, "the trained model must own training-only state for this test to mean anything"

    # Every variable the signatures capture is a network variable, and the checkpoint holds
    # exactly as many variables (same shapes) as the network: nothing else was saved.
    captured = {v.name for name in ("serving_default", "regress") for v in loaded.signatures[name].variables}
    assert captured == set(network_names)
    saved = [(key, shape) for key, shape in tf.train.list_variables(os.path.join(exported["dir"], "variables", "variables"))
             if key.endswith("VARIABLE_VALUE")]
    assert sorted(tuple(shape) for _, shape in saved) == sorted(tuple(v.shape) for v in model.network.variables)
    for key, _ in saved:
        assert not any(part in key.lower() for part in TRAINING_NAME_PARTS), key
    for name in ("serving_default", "regress", "transform_features"):
        for node in _signature_ops(loaded.signatures[name]):
            assert node.op not in TRAINING_OP_TYPES, (name, node.name, node.op)
            assert not any(part in node.name.lower() for part in ("disentangle", "covariance", "adam")), node.name


# Op types with no GPU kernel that may appear in the serving graph: the input side, which TF
# Serving runs on the host (its sessions use soft placement) before the network's tensors move to
# the GPU. tf.Example parsing, string hashing and string ops, vocabulary tables (TFT), in-graph
# checks and their formatting. Anything else without a GPU kernel would be a network op that
# silently falls back to the CPU and copies tensors back and forth on every request.
HOST_INPUT_OP_TYPES = {
    "ParseExample", "ParseExampleV2", "ParseSingleExample", "DecodeRaw",
    "StringToHashBucket", "StringToHashBucketFast", "StringToHashBucketStrong", "AsString", "StringJoin",
    "StringFormat", "StringSplitV2", "StringStrip", "StringLower", "StringUpper", "RegexReplace",
    "StaticRegexReplace", "RegexFullMatch", "StaticRegexFullMatch", "Substr", "StringLength",
    "HashTableV2", "MutableHashTableV2", "MutableHashTableOfTensorsV2", "LookupTableFindV2",
    "LookupTableSizeV2", "LookupTableImportV2", "LookupTableExportV2", "InitializeTableV2",
    "InitializeTableFromTextFileV2", "InitializeTableFromDataset",
    "PrintV2",
}


def _constraint_holds(node, constraint) -> bool:
    if constraint.name not in node.attr:  # attr left at its default: no constraint to check
        return True
    attr = node.attr[constraint.name]
    allowed = set(constraint.allowed_values.list.type)
    types = list(attr.list.type) if attr.WhichOneof("value") == "list" else [attr.type]
    return all(t in allowed for t in types)


def _has_gpu_kernel(node) -> bool:
    """A GPU (or device-independent DEFAULT) kernel whose type constraints this node meets."""
    from tensorflow.python.framework import kernels
    for kernel in kernels.get_registered_kernels_for_op(node.op).kernel:
        if kernel.device_type in ("GPU", "DEFAULT") and all(_constraint_holds(node, c) for c in kernel.constraint):
            return True
    return False


def test_every_op_without_a_gpu_kernel_is_an_input_side_host_op(exported):
    """GPU readiness without a GPU: the TensorFlow wheel here registers the same CUDA kernels as
    TF Serving 2.16.1-gpu (both TF 2.16), so a node with no matching GPU kernel would run on the
    CPU there too. Checked node by node against each kernel's type constraints."""
    for name in ("serving_default", "regress"):
        function = exported["loaded"].signatures[name]
        graph_def = function.graph.as_graph_def()
        library = {f.signature.name for f in graph_def.library.function}
        nodes = [n for n in _signature_ops(function) if n.op not in library]  # calls: their bodies are listed
        without_gpu = {(n.op, tuple(sorted(str(tf.dtypes.as_dtype(a.type).name) for k, a in n.attr.items()
                                           if a.WhichOneof("value") == "type")))
                       for n in nodes if not _has_gpu_kernel(n)}
        # Besides the input ops by type: any op on string tensors (Const, Reshape, Identity of
        # DT_STRING) stays on the host; GPUs hold no strings, and the network handles none.
        unexpected = {(op, types) for op, types in without_gpu if op not in HOST_INPUT_OP_TYPES and "string" not in types}
        assert not unexpected, sorted(unexpected)
        assert {"ParseExampleV2"} <= {op for op, _ in without_gpu}  # the check sees the input side...
        network_ops = {n.op for n in nodes}
        assert {"MatMul", "Softmax"} <= network_ops  # ...and the network (experts, gating) on GPU kernels
        assert all(_has_gpu_kernel(n) for n in nodes if n.op in ("MatMul", "Softmax", "Relu", "Sigmoid"))


def test_warmup_requests_replay_and_fingerprint_matches_rewritten_saved_model(exported):
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting as fingerprinting_pywrap
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    from crocodile.serving import warmup
    from crocodile.serving.servable import LoadedVersion
    export_dir = exported["dir"]
    on_disk = fingerprint_pb2.FingerprintDef.FromString(open(os.path.join(export_dir, "fingerprint.pb"), "rb").read())
    fresh = fingerprint_pb2.FingerprintDef.FromString(fingerprinting_pywrap.CreateFingerprintDef(export_dir))
    assert on_disk == fresh  # the checksum is that of the saved_model.pb with the Regress method name
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in
               tf.data.TFRecordDataset(warmup.warmup_path(export_dir)).as_numpy_iterator()]
    kinds = [r.WhichOneof("log_type") for r in records]
    sizes = export.warmup_batch_sizes()
    assert kinds == ["predict_log", "regress_log"] * len(sizes) and sizes[0] == 1 and len(sizes) > 1
    predict_sizes = [r.predict_log.request.inputs["examples"].tensor_shape.dim[0].size for r in records[::2]]
    regress_sizes = [len(r.regress_log.request.input.example_list_with_context.examples) for r in records[1::2]]
    assert predict_sizes == regress_sizes == sizes
    servable = LoadedVersion("crocodile", 1, export_dir)
    assert warmup.replay(servable, export_dir) == len(records)  # every request runs on the export
