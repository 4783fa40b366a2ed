"""The curated schema: the constraints that make bad logs stop the pipeline.

SchemaGen infers a schema from the same logs it is asked to check, so on its own it
would accept a label of 2 or a domain id of 9. ``curate_schema`` tightens that inferred
schema (or builds one from scratch) with what the canonical log schema promises:

- every required column and every model feature is present in every row, with one value;
- ``domain_id`` is an int in ``[0, num_domains - 1]``;
- ``click`` is an int in ``[0, 1]``;
- the optional log columns (purchase, position, request_id, timestamp) may be absent from
  some rows, even when every row of the logs the schema was inferred from had them;
- categorical features carry no inferred string domain (new ids and categories are normal
  and go to the vocabulary's OOV bucket, so they are not anomalies).

ExampleValidator then reports a missing column, a non-binary label or an unknown domain as
an anomaly, and ``anomalies_summary`` turns the anomalies into one readable message.
"""
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from crocodile.model.features import DOMAIN_KEY, LABEL_KEY, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, FeatureConfig

_SCHEMA_TYPES = {"bytes": schema_pb2.BYTES, "int64": schema_pb2.INT, "float": schema_pb2.FLOAT}


def required_columns(config: FeatureConfig) -> Dict[str, str]:
    """Columns every log row must carry: the canonical required ones and the model features."""
    columns = dict(REQUIRED_COLUMNS)
    columns.update(config.raw_feature_columns)
    return columns


def _feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    for feature in schema.feature:
        if feature.name == name:
            return feature
    feature = schema.feature.add()
    feature.name = name
    return feature


def curate_schema(inferred: schema_pb2.Schema, config: FeatureConfig) -> schema_pb2.Schema:
    """A copy of ``inferred`` with the canonical constraints (see the module docstring).

    Columns absent from ``inferred`` (absent from the logs) are added, so the validator
    reports them as missing instead of silently not knowing them.
    """
    schema = schema_pb2.Schema()
    schema.CopyFrom(inferred)
    categorical = set(config.categorical)
    for name, dtype in required_columns(config).items():
        feature = _feature(schema, name)
        feature.type = _SCHEMA_TYPES[dtype]
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.value_count.min = 1
        feature.value_count.max = 1
        feature.shape.Clear()
        feature.shape.dim.add().size = 1
        if name in categorical:
            feature.ClearField("domain")
            feature.ClearField("string_domain")
    existing = {f.name: f for f in schema.feature}
    for name in set(OPTIONAL_COLUMNS) - set(required_columns(config)):
        if name in existing:
            existing[name].presence.min_fraction = 0.0
            existing[name].presence.min_count = 0
            existing[name].ClearField("shape")
    domain = _feature(schema, DOMAIN_KEY)
    domain.int_domain.min = 0
    domain.int_domain.max = config.num_domains - 1
    label = _feature(schema, LABEL_KEY)
    label.int_domain.min = 0
    label.int_domain.max = 1
    # Top-level string domains used only by the categorical features would now dangle.
    used = {f.domain for f in schema.feature if f.HasField("domain")}
    kept = [d for d in schema.string_domain if d.name in used]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)
    return schema


def anomalies_summary(anomalies_by_split: Dict[str, anomalies_pb2.Anomalies]) -> List[str]:
    """One line per anomaly: ``split: column 'x': <description>``; empty if the data is clean."""
    lines = []
    for split, anomalies in sorted(anomalies_by_split.items()):
        for name, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"{split}: column {name!r}: {info.short_description}: {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"{split}: dataset: {info.short_description}: {info.description}")
    return lines
