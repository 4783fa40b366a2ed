"""Replays a compiled KFP v2 PipelineSpec the way the open-source KFP backend runs it, without a cluster.

What each part of Kubeflow Pipelines does, and what this module does instead (the Go
sources are in kubeflow/pipelines, backend/src/v2/):

- compiler (compiler/visitor.go, compiler/argocompiler/): accepts container and importer
  executors and DAG components only; a resolver is "not implemented yet". ``node_kinds``
  lists what a spec holds; ``replay`` refuses anything else.
- driver (driver/container.go, driver/resolve.go, driver/driver.go ``provisionOutputs``):
  resolves each task's inputs. Parameters: only ``runtimeValue.constant`` (the 2.0
  ``constantValue`` form is "not implemented") plus component defaults. Artifacts: the
  producer's output as recorded in ML Metadata, i.e. its URI and its metadata, which is
  the executor's ``ExecutorOutput`` metadata merged in by the launcher, numbers as JSON
  numbers (metadata/converter.go ``toRuntimeArtifact``), plus ``display_name``. Outputs:
  URIs ``<pipeline root>/<pipeline name>/<run id>/<task>/<salt>/<output key>`` and the
  executor output file ``<task root>/output_metadata.json``.
- launcher (component/launcher_v2.go): creates the output folders, replaces ``{{$}}`` in
  the container's command and args by the ExecutorInput JSON (and the other
  ``{{$.inputs...}}`` placeholders), runs the command as a child process, reads the
  executor output file and merges each output artifact's URI and metadata
  (``mergeRuntimeArtifacts``) before recording it.
- caching (driver/cache.go): a task whose component, container and resolved inputs equal
  an earlier execution's reuses its outputs, when the task enables caching.

Deviations, all forced by having no cluster: the pipeline root is a local folder where
KFP would use gs:// or s3:// (the launcher would map those to /gcs/... and /s3/... local
paths; TensorFlow writes the URI directly either way), the processes run on this host
instead of in pods of the image, and ML Metadata is this module's dictionary.
"""
import copy
import hashlib
import itertools
import json
import os
import subprocess
import time
import uuid
from typing import Dict, List, Optional

import yaml

ACCEPTED_EXECUTOR_KINDS = ("container", "importer")


def load_spec(path: str) -> dict:
    """The PipelineSpec document (the first YAML document; a second one is the PlatformSpec)."""
    with open(path) as f:
        return next(yaml.safe_load_all(f))


def load_platform_spec(path: str) -> dict:
    with open(path) as f:
        documents = list(yaml.safe_load_all(f))
    return documents[1] if len(documents) > 1 else {}


def node_kinds(spec: dict) -> Dict[str, str]:
    """{component name: 'dag' | 'container' | 'importer' | 'resolver' | ...} for every component."""
    kinds = {}
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for name, component in spec["components"].items():
        if "dag" in component:
            kinds[name] = "dag"
        else:
            (kind,) = executors[component["executorLabel"]].keys()
            kinds[name] = kind
    kinds["root"] = "dag" if "dag" in spec["root"] else next(iter(spec["root"]))
    return kinds


def topological_order(tasks: Dict[str, dict]) -> List[str]:
    """Task names, each after every task it depends on (dependentTasks or an input's producer)."""
    needs = {}
    for name, task in tasks.items():
        producers = set(task.get("dependentTasks", []))
        for source in task.get("inputs", {}).get("artifacts", {}).values():
            if "taskOutputArtifact" in source:
                producers.add(source["taskOutputArtifact"]["producerTask"])
        needs[name] = producers
    order: List[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in order and needs[n] <= set(order))
        if not ready:
            raise ValueError(f"cycle among tasks {sorted(set(tasks) - set(order))}")
        order.extend(ready)
    return order


class Launcher:
    """Runs the container tasks of PipelineSpecs as KFP does, keeping ML Metadata in memory.

    One instance is one KFP deployment: its ``cache`` spans runs (KFP's execution cache).
    """

    def __init__(self, pipeline_root: str, env: Dict[str, str], log_dir: str):
        self.pipeline_root = pipeline_root
        self.env = env
        self.log_dir = log_dir
        self.cache: Dict[str, Dict[str, dict]] = {}
        self._ids = itertools.count(1)

    def _resolve_parameters(self, task: dict, component: dict) -> dict:
        values = {}
        for name, source in task.get("inputs", {}).get("parameters", {}).items():
            runtime = source.get("runtimeValue")
            if runtime is None or "constant" not in runtime:
                # driver/resolve.go: "param runtime value spec of type %T not implemented"
                raise NotImplementedError(f"parameter {name!r}: {source} is not a runtimeValue.constant; "
                                          "the open-source KFP driver rejects it")
            values[name] = runtime["constant"]
        for name, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if name not in values and "defaultValue" in definition:  # launcher_v2.go addDefaultParams
                values[name] = definition["defaultValue"]
        return values

    def _record(self, runtime_artifact: dict, executor_output: dict, name: str) -> dict:
        """mergeRuntimeArtifacts + RecordArtifact + toRuntimeArtifact: what the next task gets."""
        recorded = copy.deepcopy(runtime_artifact)
        produced = executor_output.get("artifacts", {}).get(name, {}).get("artifacts", [])
        if produced:
            if produced[0].get("uri"):
                recorded["uri"] = produced[0]["uri"]
            recorded.setdefault("metadata", {}).update(produced[0].get("metadata", {}))
        recorded.setdefault("metadata", {}).setdefault("display_name", name)
        recorded["name"] = str(next(self._ids))  # the ML Metadata artifact id
        return recorded

    def run(self, spec: dict, run_id: Optional[str] = None, timeout_s: float = 1800) -> Dict[str, dict]:
        """Runs every task; returns {task: {'outputs': {key: runtime artifact}, 'cached': bool, 'seconds': s}}."""
        kinds = node_kinds(spec)
        refused = {n: k for n, k in kinds.items() if k not in ACCEPTED_EXECUTOR_KINDS + ("dag",)}
        if refused:
            raise NotImplementedError(f"the open-source KFP compiler rejects these nodes: {refused}")
        run_id = run_id or uuid.uuid4().hex[:12]
        pipeline_name = spec["pipelineInfo"]["name"]
        tasks = spec["root"]["dag"]["tasks"]
        executors = spec["deploymentSpec"]["executors"]
        results: Dict[str, dict] = {}
        for task_name in topological_order(tasks):
            task = tasks[task_name]
            component = spec["components"][task["componentRef"]["name"]]
            executor = executors[component["executorLabel"]]
            if "container" not in executor:
                raise NotImplementedError(f"{task_name}: only container executors are replayed here")
            container = executor["container"]
            inputs = {
                "parameterValues": self._resolve_parameters(task, component),
                "artifacts": {
                    key: {"artifacts": [results[src["taskOutputArtifact"]["producerTask"]]["outputs"]
                                        [src["taskOutputArtifact"]["outputArtifactKey"]]]}
                    for key, src in task.get("inputs", {}).get("artifacts", {}).items()},
            }
            cache_key = hashlib.sha256(json.dumps([component, container, inputs], sort_keys=True).encode()).hexdigest()
            if task.get("cachingOptions", {}).get("enableCache") and cache_key in self.cache:
                results[task_name] = {"outputs": self.cache[cache_key], "cached": True, "seconds": 0.0}
                continue
            task_root = f"{self.pipeline_root.rstrip('/')}/{pipeline_name}/{run_id}/{task_name}/{uuid.uuid4().hex[:8]}"
            outputs = {
                key: {"artifacts": [{"name": key, "uri": f"{task_root}/{key}", "type": definition["artifactType"],
                                     **({"metadata": definition["metadata"]} if "metadata" in definition else {})}]}
                for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
            executor_input = {"inputs": inputs,
                              "outputs": {"artifacts": outputs, "outputFile": f"{task_root}/output_metadata.json"}}
            for artifact_list in outputs.values():  # prepareOutputFolders
                os.makedirs(os.path.dirname(artifact_list["artifacts"][0]["uri"]), exist_ok=True)
            command = [self._substitute(part, executor_input) for part in container["command"] + container.get("args", [])]
            started = time.time()
            workdir = os.path.join(self.log_dir, f"{run_id}-{task_name}")
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "log.txt"), "w") as log:
                process = subprocess.run(command, cwd=workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         timeout=timeout_s)
            if process.returncode != 0:
                with open(os.path.join(workdir, "log.txt")) as log:
                    tail = log.read()[-4000:]
                raise RuntimeError(f"task {task_name} exited with {process.returncode}:\n{tail}")
            output_file = executor_input["outputs"]["outputFile"]
            executor_output = {}
            if os.path.exists(output_file):
                with open(output_file) as f:
                    executor_output = json.load(f)
            recorded = {key: self._record(lst["artifacts"][0], executor_output, key) for key, lst in outputs.items()}
            self.cache[cache_key] = recorded
            results[task_name] = {"outputs": recorded, "cached": False, "seconds": time.time() - started,
                                  "command": command}
        return results

    @staticmethod
    def _substitute(text: str, executor_input: dict) -> str:
        """launcher_v2.go compileCmdAndArgs: ``{{$}}`` and the per-input/output placeholders."""
        text = text.replace("{{$}}", json.dumps(executor_input))
        for key, value in executor_input["inputs"]["parameterValues"].items():
            text = text.replace(f"{{{{$.inputs.parameters['{key}']}}}}",
                                value if isinstance(value, str) else json.dumps(value))
        for side in ("inputs", "outputs"):
            for key, lst in executor_input[side]["artifacts"].items():
                text = text.replace(f"{{{{$.{side}.artifacts['{key}'].uri}}}}", lst["artifacts"][0]["uri"])
        if "{{$" in text:
            raise NotImplementedError(f"unhandled KFP placeholder in {text[:200]!r}")
        return text
