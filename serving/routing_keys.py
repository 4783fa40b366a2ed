"""Where the router finds a request's domain and user.

Order (DESIGN section 6): the context Example of an ``ExampleListWithContext``, else the first
Example of the list (Regress), or the first serialized Example of the ``examples`` tensor
(Predict), else the request metadata ``x-domain-id`` / ``x-user-id``. Only the first Example
is parsed: routing must stay cheap next to the model.
"""
from typing import Optional, Tuple

from google.protobuf.message import DecodeError
from crocodile.model.features import DOMAIN_KEY, USER_KEY
from crocodile.serving import status
from crocodile.serving.wire_protos import Example

DOMAIN_HEADER, USER_HEADER, REQUEST_ID_HEADER = "x-domain-id", "x-user-id", "x-request-id"
PREDICT_EXAMPLES_INPUT = "examples"

Key = Tuple[Optional[int], Optional[str]]


def _key_from_example(example) -> Key:
    features = example.features.feature
    domain = user = None
    if DOMAIN_KEY in features:
        feature = features[DOMAIN_KEY]
        if feature.WhichOneof("kind") != "int64_list" or not feature.int64_list.value:
            raise status.invalid_argument(
                f"feature '{DOMAIN_KEY}' must be one int64 value, got {feature.WhichOneof('kind') or 'no value'}")
        domain = int(feature.int64_list.value[0])
    if USER_KEY in features:
        feature = features[USER_KEY]
        if feature.WhichOneof("kind") != "bytes_list" or not feature.bytes_list.value:
            raise status.invalid_argument(
                f"feature '{USER_KEY}' must be one bytes value, got {feature.WhichOneof('kind') or 'no value'}")
        user = feature.bytes_list.value[0].decode("utf-8", "replace")
    return domain, user


def merge_keys(first: Key, second: Key) -> Key:
    return (first[0] if first[0] is not None else second[0],
            first[1] if first[1] is not None else second[1])


def _parse_example(serialized: bytes, where: str):
    try:
        return Example.FromString(serialized)
    except DecodeError:
        raise status.invalid_argument(f"{where} is not a serialized tf.Example") from None


def key_from_regress(request) -> Key:
    """``request``: a ``RegressionRequestView``."""
    model_input = request.input
    key: Key = (None, None)
    # The real Input is a oneof of the two; a client sends one.
    if model_input.HasField("example_list_with_context"):
        lists = model_input.example_list_with_context
        key = _key_from_example(lists.context)
        if lists.examples:
            key = merge_keys(key, _key_from_example(_parse_example(lists.examples[0], "examples[0]")))
    elif model_input.HasField("example_list") and model_input.example_list.examples:
        key = _key_from_example(_parse_example(model_input.example_list.examples[0], "examples[0]"))
    return key


def key_from_predict(request) -> Key:
    """``request``: a ``PredictRequestView`` (its ``inputs`` map as a list of entries)."""
    tensor = None
    for entry in request.inputs:  # a map: the last entry with the key wins, as in the parser
        if entry.key == PREDICT_EXAMPLES_INPUT:
            tensor = entry.value
    if tensor is None or not tensor.string_val:
        return None, None
    return _key_from_example(_parse_example(tensor.string_val[0], f"inputs['{PREDICT_EXAMPLES_INPUT}'][0]"))


def key_from_metadata(metadata: dict) -> Key:
    domain = metadata.get(DOMAIN_HEADER)
    if domain is not None:
        try:
            domain = int(domain)
        except ValueError:
            raise status.invalid_argument(f"metadata '{DOMAIN_HEADER}' must be an integer, got {domain!r}") from None
    return domain, metadata.get(USER_HEADER)


def require_key(key: Key) -> Tuple[int, str]:
    domain, user = key
    where = "the context Example, the first Example, or request metadata"
    if domain is None:
        raise status.invalid_argument(f"request has no '{DOMAIN_KEY}': the router reads it from {where} "
                                      f"'{DOMAIN_HEADER}'")
    if user is None:
        raise status.invalid_argument(f"request has no '{USER_KEY}': the router reads it from {where} "
                                      f"'{USER_HEADER}'")
    return domain, user
