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
    decision: Optional[dict] = None   # the BlessingGate's blessing.json

    @property
    def reasons(self) -> List[str]:
        return list((self.decision or {}).get("reasons", []))

    def describe(self) -> str:
        from crocodile.pipeline.model_compare import gauc_lines, summary_lines

        lines = []
        if self.decision is not None:
            baseline = self.decision.get("baseline_model")
            lines.append(f"blessing gate: candidate vs {'served model ' + baseline if baseline else 'no baseline (nothing pushed yet): absolute check only'}"
                         f" on {self.decision['eval_rows']} eval rows, {self.decision['eval_clicks']} clicks")
            lines += [f"  {line}" for line in summary_lines(self.decision)]
        lines.append(f"model blessed: {'yes' if self.blessed else 'no'}")
        lines += [f"  reason: {line}" for line in self.reasons]
        if self.decision is not None:
            lines += gauc_lines(self.decision)
        lines.append(f"pushed to: {self.pushed_destination}" if self.pushed
                     else "pushed: no (the serving directory is unchanged)")
        return "\n".join(lines)


def _latest_artifact(store, type_name: str, producer: Optional[str] = None):
    artifacts = store.get_artifacts_by_type(type_name)
    if producer is not None:  # output URIs are <pipeline_root>/<node id>/<output key>/<execution id>
        artifacts = [a for a in artifacts if f"/{producer}/" in a.uri]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _custom(artifact, key: str, default=None):
    if artifact is None or key not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[key]
    return value.int_value if value.HasField("int_value") else value.string_value


def read_outcome(pipeline_root: str) -> RunOutcome:
    """Blessing (with the gate's numbers) and push of the latest run recorded under ``pipeline_root``."""
    from crocodile.pipeline.blessing import read_decision

    with metadata.Metadata(metadata_connection_config(pipeline_root)) as m:
        blessing = _latest_artifact(m.store, "ModelBlessing", producer=configs.BLESSING_GATE_ID)
        pushed_model = _latest_artifact(m.store, "PushedModel")
    blessed = bool(_custom(blessing, "blessed", 0))
    pushed = bool(_custom(pushed_model, "pushed", 0))
    return RunOutcome(blessed=blessed, pushed=pushed,
                      pushed_destination=_custom(pushed_model, "pushed_destination") if pushed else None,
                      decision=read_decision(blessing.uri) if blessing is not None else None)


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


def check_kubeflow_storage(pipeline_root: str, data: str, serving_dir: str,
                           volume: Optional[str] = None,
                           mount_path: str = configs.KFP_VOLUME_MOUNT_PATH) -> None:
    """Raises ValueError unless every location is one all of a run's pods can reach.

    On Kubeflow each step is its own pod: a plain path is that pod's own disk unless a
    persistent volume claim is mounted there (``volume``, mounted at ``mount_path`` in
    every step). The pipeline root must be an object store, because the KFP launcher maps
    artifact URIs only for gs://, s3:// and minio:// (and TensorFlow opens no minio://).
    """
    if not pipeline_root.startswith(configs.KFP_PIPELINE_ROOT_SCHEMES):
        raise ValueError(f"--pipeline-root {pipeline_root}: on Kubeflow the pipeline root must be a "
                         f"{' or '.join(configs.KFP_PIPELINE_ROOT_SCHEMES)} URI (the KFP launcher stores "
                         "artifacts only in object stores)")
    mount = mount_path.rstrip("/") + "/"
    for flag, location in (("--data", data), ("--serving-dir", serving_dir)):
        if location.startswith(configs.KFP_DATA_SCHEMES):
            continue
        if volume and location.startswith(mount):
            continue
        where = (f"a path under the volume mount {mount_path}" if volume
                 else f"a path on a volume mounted with --pvc NAME (at {mount_path})")
        raise ValueError(f"{flag} {location}: on Kubeflow every step runs in its own pod; give a "
                         f"{' or '.join(configs.KFP_DATA_SCHEMES)} URI or {where}")


def _platform_spec(executor_labels, volume: str, mount_path: str) -> dict:
    """KFP PlatformSpec document mounting PVC ``volume`` at ``mount_path`` in every executor
    (the format kfp-kubernetes' ``mount_pvc`` writes and the backend's Argo compiler reads)."""
    mount = {"mountPath": mount_path, "pvcNameParameter": {"runtimeValue": {"constant": volume}},
             "constant": volume}
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        label: {"pvcMount": [dict(mount)]} for label in sorted(executor_labels)}}}}}


def compile_kubeflow(pipeline, output_file: str, image: str, volume: Optional[str] = None,
                     mount_path: str = configs.KFP_VOLUME_MOUNT_PATH) -> str:
    """Writes the KFP v2 PipelineSpec for ``pipeline`` with ``image`` on every component.

    Schema 2.1 (``use_pipeline_spec_2_1``): parameters are typed ``parameterValues`` with
    ``runtimeValue.constant``, the form the open-source KFP driver resolves (it rejects the
    2.0 ``constantValue``; backend/src/v2/driver/resolve.go). The pipeline root becomes the
    spec's ``defaultPipelineRoot``; with ``volume`` a second YAML document (PlatformSpec)
    mounts that persistent volume claim into every step.
    """
    import yaml

    if not output_file.endswith((".yaml", ".yml")):
        # kfp.Client uploads only .yaml/.yml (and archives); JSON is Vertex's PipelineJob.
        raise ValueError(f"{output_file}: the compiled pipeline must be a .yaml or .yml file")
    output_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True),
        output_dir=output_dir,
        output_filename=os.path.basename(output_file))
    runner.run(pipeline, write_out=True)
    path = os.path.join(output_dir, os.path.basename(output_file))
    with open(path) as f:
        spec = yaml.safe_load(f)
    spec["defaultPipelineRoot"] = pipeline.pipeline_info.pipeline_root
    documents = [spec]
    if volume:
        documents.append(_platform_spec(spec["deploymentSpec"]["executors"], volume, mount_path))
    with open(path, "w") as f:
        f.write("# PIPELINE DEFINITION (crocodile pipeline compile; KFP v2 PipelineSpec)\n")
        yaml.safe_dump_all(documents, f, sort_keys=False)
    return path
