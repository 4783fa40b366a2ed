"""tf.Example building for scoring requests (client, router tests, benchmarks).

A feature value becomes ``bytes_list`` (str/bytes), ``int64_list`` (int, bool) or
``float_list`` (float); lists and numpy arrays keep their element type.
"""
from typing import Iterable, Mapping, Optional

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import input_pb2


def _fill(feature, value) -> None:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values:
        raise ValueError("a feature needs at least one value")
    first = values[0]
    if isinstance(first, (str, bytes, np.str_, np.bytes_)):
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in values)
    elif isinstance(first, (bool, int, np.integer)):
        feature.int64_list.value.extend(int(v) for v in values)
    elif isinstance(first, (float, np.floating)):
        feature.float_list.value.extend(float(v) for v in values)
    else:
        raise ValueError(f"unsupported feature value type {type(first).__name__}")


def make_example(features: Mapping[str, object]) -> example_pb2.Example:
    example = example_pb2.Example()
    for key, value in features.items():
        try:
            _fill(example.features.feature[key], value)
        except ValueError as error:
            raise ValueError(f"feature {key!r}: {error}") from None
    return example


def example_list_with_context(context: Mapping[str, object],
                              candidates: Iterable[Mapping[str, object]]) -> input_pb2.Input:
    """``Input`` with the shared features once (context) and one Example per candidate."""
    model_input = input_pb2.Input()
    model_input.example_list_with_context.context.CopyFrom(make_example(context))
    for candidate in candidates:
        model_input.example_list_with_context.examples.add().CopyFrom(make_example(candidate))
    return model_input


def merged_features(context: Optional[Mapping[str, object]], candidate: Mapping[str, object]) -> dict:
    """What the server sees for one candidate: context features, candidate's override."""
    merged = dict(context or {})
    merged.update(candidate)
    return merged
