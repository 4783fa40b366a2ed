"""Run the pipeline locally (LocalDagRunner + SQLite ML Metadata) or compile it for Kubeflow.

``run_local`` prints one progress line per component and returns what happened
(``RunOutcome``: blessed or not, pushed where), read back from ML Metadata.
``compile_kubeflow`` writes a KFP v2 PipelineSpec YAML (what ``kfp.Client`` uploads).
"""
import contextlib
import dataclasses
import logging as std_logging
import os
import time
from typing import List, Optional

from absl import logging
from tfx import v1 as tfx
from tfx.orchestration import metadata

from crocodile.pipeline import configs


# Loggers that repeat harmless warnings on every run (Beam's relayed worker logs,
# TensorFlow deprecation notices inside TFX); silenced unless verbose.
_NOISY_LOGGERS = ("apache_beam", "tensorflow")


def metadata_path(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, configs.METADATA_FILENAME)


def metadata_connection_config(pipeline_root: str):
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(pipeline_root))


@contextlib.contextmanager
def _component_progress(printer):
    """Prints one line when each component starts and one when it ends, with its duration.

    LocalDagRunner runs the components one after another through
    ``tfx.orchestration.portable.launcher.Launcher``; for the duration of the run that
    class is swapped for a subclass that reports around ``launch()``. (TFX's own
    "Component X is running" log lines stop reaching handlers once Beam jobs have run,
    so they cannot drive progress output.)
    """
    from tfx.orchestration.portable import launcher as launcher_module

    original = launcher_module.Launcher

    class ProgressLauncher(original):
        def _prepare_execution(self):
            # Remembers whether the driver found a cached result (is_execution_needed False).
            prepared = super()._prepare_execution()
            self._runs_executor = prepared.is_execution_needed
            return prepared

        def launch(self):
            node_id = self._pipeline_node.node_info.id
            printer(f"[{time.strftime('%H:%M:%S')}] {node_id}: running")
            started = time.time()
            try:
                execution_info = super().launch()
            except Exception:
                printer(f"[{time.strftime('%H:%M:%S')}] {node_id}: FAILED after "
                        f"{time.time() - started:.1f} s")
                raise
            how = "done" if getattr(self, "_runs_executor", True) else "cached"
            printer(f"[{time.strftime('%H:%M:%S')}] {node_id}: {how} in {time.time() - started:.1f} s")
            return execution_info

    launcher_module.Launcher = ProgressLauncher
    try:
        yield
    finally:
        launcher_module.Launcher = original


@dataclasses.dataclass
class RunOutcome:
    blessed: bool
    pushed: bool
    pushed_destination: Optional[str]
    validation_failures: List[str]
    auc_by_slice: List[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        lines = [f"evaluation: {line}" for line in self.auc_by_slice]
        lines.append(f"model blessed: {'yes' if self.blessed else 'no'}")
        lines += [f"  failed check: {line}" for line in self.validation_failures]
        lines.append(f"pushed to: {self.pushed_destination}" if self.pushed
                     else "pushed: no (the serving directory is unchanged)")
        return "\n".join(lines)


def _latest_artifact(store, type_name: str):
    artifacts = store.get_artifacts_by_type(type_name)
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _custom(artifact, key: str, default=None):
    if artifact is None or key not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[key]
    return value.int_value if value.HasField("int_value") else value.string_value


def _describe_failure(failure) -> str:
    """E.g. 'AUC change vs baseline = -0.01234, needs >= -0.002'."""
    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if failure.message:
        return f"{name}: {failure.message.strip()}"
    if threshold.HasField("change_threshold"):
        return (f"{name} change vs baseline = {value:+.5f}, needs >= "
                f"{threshold.change_threshold.absolute.value:+.5f}")
    bound = threshold.value_threshold
    parts = []
    if bound.HasField("lower_bound"):
        parts.append(f">= {bound.lower_bound.value:g}")
    if bound.HasField("upper_bound"):
        parts.append(f"<= {bound.upper_bound.value:g}")
    return f"{name} = {value:.5f}, needs {' and '.join(parts)}"


def _slice_name(single_slice_keys) -> str:
    def value(key):
        kind = key.WhichOneof("kind")
        return key.bytes_value.decode() if kind == "bytes_value" else getattr(key, kind)
    return ", ".join(f"{k.column}={value(k)}" for k in single_slice_keys) or "overall"


def auc_by_slice(evaluation_uri: str) -> List[str]:
    """'overall: AUC 0.6123 (baseline 0.6001) on 4000 eval rows', then one line per domain."""
    import tensorflow_model_analysis as tfma

    rows = []
    for metrics in tfma.load_metrics(evaluation_uri):
        values = {}
        for item in metrics.metric_keys_and_values:
            if item.key.name in ("auc", "example_count") and not item.key.is_diff:
                role = "baseline" if item.key.model_name == "baseline" else "candidate"
                values[(item.key.name, role)] = item.value.double_value.value
        if ("auc", "candidate") not in values:
            continue
        line = f"{_slice_name(metrics.slice_key.single_slice_keys)}: AUC {values[('auc', 'candidate')]:.4f}"
        if ("auc", "baseline") in values:
            line += f" (baseline {values[('auc', 'baseline')]:.4f})"
        line += f" on {int(values.get(('example_count', 'candidate'), 0))} eval rows"
        rows.append(line)
    return sorted(rows, key=lambda line: (not line.startswith("overall"), line))


def validation_failures(evaluation_uri: str) -> List[str]:
    """Readable lines for each failed TFMA threshold and missing slice of an evaluation."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = []
    for per_slice in result.metric_validations_per_slice:
        slice_name = _slice_name(per_slice.slice_key.single_slice_keys)
        for failure in per_slice.failures:
            lines.append(f"{slice_name}: {_describe_failure(failure)}")
    for missing in result.missing_slices:
        lines.append(f"missing slice {dict(missing.feature_values)}")
    return lines


def read_outcome(pipeline_root: str) -> RunOutcome:
    """Blessing and push of the latest run recorded under ``pipeline_root``."""
    with metadata.Metadata(metadata_connection_config(pipeline_root)) as m:
        blessing = _latest_artifact(m.store, "ModelBlessing")
        pushed_model = _latest_artifact(m.store, "PushedModel")
        evaluation = _latest_artifact(m.store, "ModelEvaluation")
    blessed = bool(_custom(blessing, "blessed", 0))
    pushed = bool(_custom(pushed_model, "pushed", 0))
    failures = validation_failures(evaluation.uri) if evaluation is not None and not blessed else []
    return RunOutcome(blessed=blessed, pushed=pushed,
                      pushed_destination=_custom(pushed_model, "pushed_destination") if pushed else None,
                      validation_failures=failures,
                      auc_by_slice=auc_by_slice(evaluation.uri) if evaluation is not None else [])


def _print_flush(line: str) -> None:
    print(line, flush=True)


def run_local(pipeline, printer=_print_flush, verbose: bool = False) -> RunOutcome:
    """Runs ``pipeline`` with LocalDagRunner; its metadata config must point at SQLite."""
    absl_logger = logging.get_absl_logger()
    saved = absl_logger.level, absl_logger.propagate
    if verbose:
        std_logging.basicConfig(level=std_logging.INFO)
        absl_logger.setLevel(std_logging.INFO)
    else:  # TFX logs every step through absl, Beam relays its workers' warnings:
        # keep the console to progress lines (failures still raise).
        absl_logger.propagate = False
        quiet = std_logging.NullHandler()
        absl_logger.addHandler(quiet)
    noisy = {name: std_logging.getLogger(name) for name in _NOISY_LOGGERS}
    noisy_levels = {name: logger.level for name, logger in noisy.items()}
    if not verbose:
        for logger in noisy.values():
            logger.setLevel(std_logging.ERROR)
    try:
        with _component_progress(printer):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        if not verbose:
            absl_logger.removeHandler(quiet)
        absl_logger.setLevel(saved[0])
        absl_logger.propagate = saved[1]
        for name, logger in noisy.items():
            logger.setLevel(noisy_levels[name])
    return read_outcome(pipeline.pipeline_info.pipeline_root)


def compile_kubeflow(pipeline, output_file: str, image: str) -> str:
    """Writes the KFP v2 PipelineSpec for ``pipeline`` with ``image`` on every component."""
    if not output_file.endswith((".yaml", ".yml")):
        # kfp.Client uploads only .yaml/.yml (and archives); JSON is Vertex's PipelineJob.
        raise ValueError(f"{output_file}: the compiled pipeline must be a .yaml or .yml file")
    output_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=output_dir,
        output_filename=os.path.basename(output_file))
    runner.run(pipeline, write_out=True)
    return os.path.join(output_dir, os.path.basename(output_file))
