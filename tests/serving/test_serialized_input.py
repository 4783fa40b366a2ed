"""Regress input as TF Serving builds it: each candidate's model input is the context's bytes followed
by the candidate's bytes (util.cc InputToSerializedExampleTensor over internal/serialized_input.proto),
checked on hand-built Examples against protobuf's merge and TensorFlow's parser, for a request parsed
by the model server (Examples left as bytes) and for a parsed ``Input`` (warmup records)."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import input_pb2, regression_pb2

from crocodile.serving import inference, status, wire_protos
from crocodile.serving.examples import example_list_with_context, make_example

CONTEXT = {"user_id": "u7", "domain_id": 3, "shared": "from-context"}
CANDIDATES = [{"item_id": "i1", "price": 2.5, "shared": "from-candidate"}, {"item_id": "i2", "price": 4.0}]
SPEC = {"user_id": tf.io.FixedLenFeature([], tf.string), "domain_id": tf.io.FixedLenFeature([], tf.int64),
        "item_id": tf.io.FixedLenFeature([], tf.string), "price": tf.io.FixedLenFeature([], tf.float32),
        "shared": tf.io.FixedLenFeature([], tf.string, default_value=b"absent")}


def features(serialized: bytes) -> dict:
    """An Example's features as a dict (a parsed map with a repeated key compares unequal with ==
    in the C++ protobuf runtime although every entry is equal)."""
    return {key: value.SerializeToString() for key, value in tf.train.Example.FromString(serialized).features.feature.items()}


def as_wire(model_input) -> "wire_protos.SerializedInput":
    """What the model server's Regress parser makes of the request's bytes."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "m"
    request.input.CopyFrom(model_input)
    return wire_protos.SerializedRegressionRequest.FromString(request.SerializeToString()).input


@pytest.mark.parametrize("parsed_by", ["server", "warmup"])
def test_each_candidate_is_context_bytes_then_candidate_bytes(parsed_by):
    model_input = example_list_with_context(CONTEXT, CANDIDATES)
    examples = inference.serialized_examples(as_wire(model_input) if parsed_by == "server" else model_input)
    size = make_example(CONTEXT).ByteSize()  # map entries may serialize in any order, the size is fixed
    assert examples.shape == (2,)
    for serialized, candidate in zip(examples, CANDIDATES):
        assert tf.train.Example.FromString(serialized[:size]) == make_example(CONTEXT)
        assert tf.train.Example.FromString(serialized[size:]) == make_example(candidate)


def test_concatenation_is_protobuf_merge_and_the_candidate_wins_a_shared_feature():
    examples = inference.serialized_examples(as_wire(example_list_with_context(CONTEXT, CANDIDATES)))
    for serialized, candidate in zip(examples, CANDIDATES):
        merged = tf.train.Example()
        merged.MergeFrom(make_example(CONTEXT))
        merged.MergeFrom(make_example(candidate))
        assert features(serialized) == features(merged.SerializeToString())
    parsed = tf.io.parse_example(tf.constant(list(examples)), SPEC)  # what the model's parse op sees
    assert parsed["shared"].numpy().tolist() == [b"from-candidate", b"from-context"]
    assert parsed["user_id"].numpy().tolist() == [b"u7", b"u7"]
    assert parsed["domain_id"].numpy().tolist() == [3, 3]
    assert parsed["item_id"].numpy().tolist() == [b"i1", b"i2"]
    np.testing.assert_array_equal(parsed["price"].numpy(), np.array([2.5, 4.0], np.float32))


def test_context_sent_in_two_pieces_is_merged_as_a_parsed_input_would_merge_it():
    # Protobuf merges repeated occurrences of a message field; TF Serving parses the Input first,
    # so both pieces reach the model. A single bytes field would keep only the second piece.
    first = example_list_with_context({"user_id": "u7"}, CANDIDATES[1:])
    second = input_pb2.Input()
    second.example_list_with_context.context.CopyFrom(make_example({"domain_id": 3}))
    body = first.SerializeToString() + second.SerializeToString()
    wire = wire_protos.SerializedInput.FromString(body)
    [serialized] = inference.serialized_examples(wire)
    [expected] = inference.serialized_examples(input_pb2.Input.FromString(body))
    assert features(serialized) == features(expected)
    merged = tf.train.Example.FromString(serialized).features.feature
    assert merged["user_id"].bytes_list.value == [b"u7"] and merged["domain_id"].int64_list.value == [3]


def test_example_list_bytes_pass_unchanged_and_the_last_input_kind_wins():
    listed = input_pb2.Input()
    for candidate in CANDIDATES:
        listed.example_list.examples.add().CopyFrom(make_example(candidate))
    assert [tf.train.Example.FromString(e) for e in inference.serialized_examples(as_wire(listed))] == [
        make_example(c) for c in CANDIDATES]
    with_context = example_list_with_context(CONTEXT, CANDIDATES[:1])
    for body in (listed.SerializeToString() + with_context.SerializeToString(),
                 with_context.SerializeToString() + listed.SerializeToString()):  # a oneof: the last one set wins
        assert list(inference.serialized_examples(wire_protos.SerializedInput.FromString(body))) == list(
            inference.serialized_examples(input_pb2.Input.FromString(body)))


@pytest.mark.parametrize("model_input", [input_pb2.Input(), example_list_with_context(CONTEXT, []),
                                         input_pb2.Input(example_list=input_pb2.ExampleList())])
def test_no_examples_is_tf_servings_input_is_empty(model_input):
    with pytest.raises(status.ServingError, match="Input is empty."):
        inference.serialized_examples(as_wire(model_input))
