"""Two small custom TFX components around data validation.

- ``CuratedSchemaGen``: inferred schema -> curated schema (``schema.curate_schema``).
- ``AnomaliesGate``: TFX 1.16's ExampleValidator only records anomalies (and a ``blessed``
  custom property); it never fails. The gate reads the anomalies and raises, naming each
  problem, so nothing downstream (Transform, Trainer, Pusher) runs on bad logs. It passes
  the schema through, and Transform reads the gate's output, so the order is a data
  dependency that every orchestrator (local, Kubeflow) honours.

Both run from the installed package, so the Kubeflow image needs nothing extra.
"""
import json
import os

from tfx import v1 as tfx
from tfx.types import standard_artifact_utils
from tfx.utils import io_utils

from crocodile.model.features import FeatureConfig
from crocodile.pipeline import schema as curated

SCHEMA_FILENAME = "schema.pbtxt"
ANOMALIES_FILENAME = "SchemaDiff.pb"  # ExampleValidator's file name per split


class DataValidationError(RuntimeError):
    """The logs violate the curated schema; the message lists every anomaly."""


def _read_schema(artifact):
    return io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(artifact.uri))


def _write_schema(artifact, schema) -> None:
    io_utils.write_pbtxt_file(os.path.join(artifact.uri, SCHEMA_FILENAME), schema)


@tfx.dsl.components.component
def CuratedSchemaGen(  # noqa: N802  (TFX component names are class-like)
    inferred_schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
    feature_config: tfx.dsl.components.Parameter[str],
):
    """Writes the inferred schema tightened with the canonical log constraints."""
    config = FeatureConfig.from_dict(json.loads(feature_config))
    _write_schema(schema, curated.curate_schema(_read_schema(inferred_schema), config))


def load_anomalies(anomalies_artifact) -> dict:
    """``{split: Anomalies proto}`` from an ExampleAnomalies artifact."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    result = {}
    for split in standard_artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(
            standard_artifact_utils.get_split_uri([anomalies_artifact], split), ANOMALIES_FILENAME)
        result[split] = anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))
    return result


@tfx.dsl.components.component
def AnomaliesGate(  # noqa: N802
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    validated_schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
):
    """Raises DataValidationError if ExampleValidator found anomalies; else passes the schema on."""
    problems = curated.anomalies_summary(load_anomalies(anomalies))
    if problems:
        raise DataValidationError(
            "the logs do not match the schema; nothing was trained or pushed:\n  "
            + "\n  ".join(problems))
    _write_schema(validated_schema, _read_schema(schema))
