"""The gRPC scoring client: ``ExampleListWithContext`` in, ranked scores and the answering arm out.

Talks to the router (arm and version come back in trailing metadata) or straight to TF Serving /
the embedded model server (then the arm is the label asked for, or None, and the version is the
one in the response's ``model_spec``).
"""
import dataclasses
import uuid
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import prediction_service_pb2_grpc, regression_pb2

from crocodile.model.features import DOMAIN_KEY, USER_KEY
from crocodile.serving.examples import example_list_with_context
from crocodile.serving.router import ARM_HEADER, VERSION_HEADER
from crocodile.serving.router_security import AUTHORIZATION_HEADER, BEARER
from crocodile.serving.routing_keys import REQUEST_ID_HEADER

REGRESS_SIGNATURE = "regress"
DEFAULT_TIMEOUT_S = 10.0


@dataclasses.dataclass
class ScoreResult:
    scores: np.ndarray
    arm: Optional[str]
    version: Optional[int]


class ScoringClient:
    def __init__(self, target: str, model_name: str = "crocodile", timeout_s: float = DEFAULT_TIMEOUT_S,
                 tls: bool = False, root_certificates: Optional[bytes] = None,
                 tls_server_name: Optional[str] = None, token: Optional[str] = None):
        """``tls``: a TLS channel, checked against ``root_certificates`` (PEM; None: the system's roots)
        and ``tls_server_name`` (default: the target's host). ``token``: sent as a bearer token."""
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._auth = ((AUTHORIZATION_HEADER, f"{BEARER}{token}"),) if token else ()
        if tls or root_certificates:
            options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root_certificates), options=options)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def build_request(self, domain_id: int, user_id: str, candidates: Sequence[Dict],
                      context: Optional[Dict] = None, label: Optional[str] = None):
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = REGRESS_SIGNATURE
        if label:
            request.model_spec.version_label = label
        shared = dict(context or {})
        shared[USER_KEY] = user_id
        shared[DOMAIN_KEY] = int(domain_id)
        request.input.CopyFrom(example_list_with_context(shared, candidates))
        return request

    def regress(self, domain_id: int, user_id: str, candidates: List[Dict], context: Optional[Dict] = None,
                label: Optional[str] = None, request_id: Optional[str] = None) -> ScoreResult:
        """Scores ``candidates`` (item feature dicts) for one user in one domain."""
        request = self.build_request(domain_id, user_id, candidates, context, label)
        metadata = ((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex),) + self._auth
        response, call = self._stub.Regress.with_call(request, timeout=self.timeout_s, metadata=metadata)
        trailing = dict(call.trailing_metadata() or ())
        scores = np.array([r.value for r in response.result.regressions], dtype=np.float32)
        version = trailing.get(VERSION_HEADER)
        version = int(version) if version else (response.model_spec.version.value or None)
        return ScoreResult(scores, trailing.get(ARM_HEADER, label), version)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
