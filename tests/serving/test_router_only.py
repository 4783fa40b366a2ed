"""The router-only distribution: the router imports and routes with TensorFlow (and every other
package outside setup.py's ROUTER_RUNTIME) made unimportable, and the copied descriptors are current.

The subprocess blocks the imports with a meta-path finder, starts a real router in front of a real
model server (this process), sends a Regress request built with the TF-free protos, and reports what
it imported; installing the distribution into a fresh environment needs the network, so that is
done by docker/Dockerfile.router's build, not here."""
import ast
import json
import os
import re
import subprocess
import sys

from serving_test_data import CANARY_VERSION, STABLE_VERSION

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BLOCKED = ("tensorflow", "tensorflow_serving", "tf_keras", "keras", "tfx", "apache_beam", "numpy", "pandas",
           "scipy", "kfp")

CHILD = r'''
import sys
AT_START = set(sys.modules)  # what the interpreter loaded before the router (site hooks)
import importlib.abc, importlib.metadata, json
BLOCKED = set(sys.argv[2].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: not part of the router-only install")
sys.meta_path.insert(0, Block())

import grpc
from crocodile.serving import cli, wire_protos
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.router import Router, build_router_server, shutdown

policy = CanaryPolicy.from_dict({"experiment": "tf-free", "salt": "s", "default_canary_share": 0.5})
router = Router(sys.argv[1], policy)
server, port = build_router_server(router, 0, host="127.0.0.1")
server.start()
request = wire_protos.RegressionRequest()
request.model_spec.name = "crocodile"
request.model_spec.signature_name = "regress"
context = request.input.example_list_with_context.context.features.feature
context["user_id"].bytes_list.value.append(b"u7")
context["domain_id"].int64_list.value.append(3)
context["user_segment"].bytes_list.value.append(b"s")
context["user_region"].bytes_list.value.append(b"r")
item = request.input.example_list_with_context.examples.add().features.feature
item["item_id"].bytes_list.value.append(b"i1")
item["item_category"].bytes_list.value.append(b"c1")
item["price"].float_list.value.append(2.5)
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Regress",
                               request_serializer=wire_protos.RegressionRequest.SerializeToString,
                               response_deserializer=wire_protos.RegressionResponse.FromString)
    response, outcome = call.with_call(request, timeout=30)
shutdown(server, router, 2.0)
import os
loaded = {os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
          if name not in AT_START and getattr(m, "__file__", None)}
owners = set()
for dist in importlib.metadata.distributions():
    if any(os.path.realpath(dist.locate_file(f)) in loaded for f in dist.files or ()):
        owners.add(dist.metadata["Name"])
print(json.dumps({"arm": dict(outcome.trailing_metadata())["x-crocodile-arm"],
                  "version": response.model_spec.version.value, "score_count": len(response.result.regressions),
                  "expected_arm": policy.arm_for(3, "u7"),
                  "distributions": sorted(owners)}))
'''


def _name(requirement):
    return re.split(r"[<>=!~\[ ;(]", requirement.strip())[0].lower().replace("_", "-")


def router_runtime():
    """ROUTER_RUNTIME from setup.py with what those distributions require (installed metadata)."""
    from importlib.metadata import PackageNotFoundError, requires
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    direct = [ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ROUTER_RUNTIME"]
    assert direct, "setup.py has no ROUTER_RUNTIME"
    names, todo = set(), [_name(r) for r in direct[0]]
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.add(name)
        try:
            todo += [_name(r) for r in requires(name) or () if "extra ==" not in r]
        except PackageNotFoundError:
            pass
    return names


def test_router_routes_without_tensorflow(start_model_server, config_path):
    backend, _ = start_model_server(config_path)
    env = dict(os.environ, PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", CHILD, f"127.0.0.1:{backend}", ",".join(BLOCKED)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["arm"] == report["expected_arm"]
    assert report["version"] == {"stable": STABLE_VERSION, "canary": CANARY_VERSION}[report["arm"]]
    assert report["score_count"] == 1
    # The project itself (installed editable as crocodile-ranking, or as crocodile-router) is not a dependency.
    imported = {name.lower().replace("_", "-") for name in report["distributions"]} - {"crocodile-ranking",
                                                                                       "crocodile-router"}
    assert imported <= router_runtime(), imported - router_runtime()
    assert {"grpcio", "protobuf", "grpcio-health-checking", "prometheus-client"} <= imported


def test_copied_descriptors_are_current():
    """serving/wire_descriptors.py is what `python -m crocodile.serving.build_wire_protos` writes from the
    installed wheels (in-process: this process has TensorFlow loaded already)."""
    from crocodile.serving import build_wire_protos
    assert open(build_wire_protos.TARGET).read() == build_wire_protos.render(), \
        "stale: run python -m crocodile.serving.build_wire_protos"


def test_views_read_what_the_real_messages_hold():
    """The routing views parse real tensorflow_serving requests and responses to the same values."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, regression_pb2

    from serving_test_data import good_features, predict_request, regress_request, serialized, user_context
    from crocodile.serving import wire_protos
    from crocodile.serving.routing_keys import key_from_predict, key_from_regress
    from crocodile.serving.router import label_override
    regress = regress_request(user_context(user="u9", domain=4), [{"item_id": "i1"}, {"item_id": "i2"}])
    view = wire_protos.RegressionRequestView.FromString(regress.SerializeToString())
    assert key_from_regress(view) == (4, "u9") and view.model_spec.name == "crocodile"
    assert len(view.input.example_list_with_context.examples) == 2
    predict = predict_request(serialized([good_features(user="u3", domain=2)]))
    assert key_from_predict(wire_protos.PredictRequestView.FromString(predict.SerializeToString())) == (2, "u3")
    # The appended label field merges into the client's spec, as the backend parses it.
    merged = regression_pb2.RegressionRequest.FromString(regress.SerializeToString() + label_override("canary"))
    assert (merged.model_spec.name, merged.model_spec.signature_name, merged.model_spec.version_label) == \
        ("crocodile", "regress", "canary")
    assert merged.input == regress.input
    response = predict_pb2.PredictResponse()
    response.model_spec.version.value = 42
    response.outputs["outputs"].CopyFrom(tf.make_tensor_proto([0.5, 0.25]))
    assert wire_protos.ResponseView.FromString(response.SerializeToString()).model_spec.version.value == 42
