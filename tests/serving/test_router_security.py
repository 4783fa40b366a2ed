"""TLS on the router's port and on router->backend, bearer tokens, hashed user ids, over real gRPC.

The backend behind TLS is a second router (the embedded model server has no TLS; TF Serving's is
configured by its own --ssl_config_file): client -TLS-> router A -TLS-> router B -> model server.
The certificate is a throwaway self-signed one made here with the `cryptography` package."""
import datetime
import hashlib
import hmac
import ipaddress
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving_test_data import candidates
from crocodile.cli import main as crocodile_main
from crocodile.serving.client import ScoringClient
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.router import BackendTls, Router, ServerTls

CONTEXT = {"user_segment": "s", "user_region": "r"}
POLICY = CanaryPolicy.from_dict({"experiment": "sec", "salt": "s", "default_canary_share": 0.5})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("router.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder


@pytest.fixture
def routers(start_router):
    """routers(router, tls=None) -> port: a built Router served with the data plane under test."""
    return lambda router, tls=None: start_router.router(router, tls=tls)[0]


def test_tls_on_both_hops_and_score_cli(start_model_server, config_path, certificate, routers, capsys):
    backend, _ = start_model_server(config_path)
    pem, key = (certificate / "cert.pem").read_bytes(), (certificate / "key.pem").read_bytes()
    tls = ServerTls(pem, key)
    inner_policy = CanaryPolicy.from_dict({"experiment": "inner", "salt": "s", "allow_client_version": True})
    inner = routers(Router(f"127.0.0.1:{backend}", inner_policy), tls=tls)
    outer = routers(Router(f"127.0.0.1:{inner}", POLICY, backend_tls=BackendTls(pem, "router.test")), tls=tls)
    with ScoringClient(f"127.0.0.1:{outer}", root_certificates=pem, tls_server_name="router.test") as client:
        for k in range(6):
            result = client.regress(k % 5, f"u{k}", candidates(3), context=CONTEXT)
            assert result.arm == POLICY.arm_for(k % 5, f"u{k}") and result.version == {"stable": 1, "canary": 2}[
                result.arm] and len(result.scores) == 3
    with ScoringClient(f"127.0.0.1:{outer}", timeout_s=3) as plain:  # plaintext to a TLS port fails
        with pytest.raises(grpc.RpcError) as error:
            plain.regress(0, "u", candidates(1), context=CONTEXT)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    code = crocodile_main(["score", "--target", f"127.0.0.1:{outer}", "--domain", "1", "--user", "u1",
                           "--items", "i1,i2", "--features", json.dumps(
                               {"context": CONTEXT, "items": {"i1": {"item_category": "c1", "price": 1.0},
                                                              "i2": {"item_category": "c2", "price": 2.0}}}),
                           "--tls-ca", str(certificate / "cert.pem"),
                           "--tls-server-name", "router.test"])
    assert code == 0 and f"arm={POLICY.arm_for(1, 'u1')}" in capsys.readouterr().out
    # A router that does not trust the backend's certificate cannot reach it: stable fails, UNAVAILABLE.
    untrusting = routers(Router(f"127.0.0.1:{inner}", POLICY, backend_timeout_s=2,
                                backend_tls=BackendTls(None, "router.test")))
    with ScoringClient(f"127.0.0.1:{untrusting}", timeout_s=5) as client:
        with pytest.raises(grpc.RpcError) as error:
            client.regress(0, [u for u in (f"x{k}" for k in range(50)) if POLICY.arm_for(0, u) == "stable"][0],
                           candidates(1), context=CONTEXT)
        assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_token_auth_and_hashed_user_ids(start_model_server, config_path, routers, tmp_path):
    backend, _ = start_model_server(config_path)
    log_path = tmp_path / "exposure.jsonl"
    router = Router(f"127.0.0.1:{backend}", POLICY, auth_tokens={"s3cret", "other"}, user_id_salt=b"pepper\n",
                    exposure_log=str(log_path))
    port = routers(router)
    for token, expected in ((None, grpc.StatusCode.UNAUTHENTICATED), ("wrong", grpc.StatusCode.UNAUTHENTICATED)):
        with ScoringClient(f"127.0.0.1:{port}", token=token) as client:
            with pytest.raises(grpc.RpcError) as error:
                client.regress(1, "alice", candidates(1), context=CONTEXT)
            assert error.value.code() == expected
    with ScoringClient(f"127.0.0.1:{port}", token="s3cret") as client:
        assert client.regress(1, "alice", candidates(2), context=CONTEXT).arm == POLICY.arm_for(1, "alice")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # health needs no token
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    router.flush()
    # In time order: with the native data plane, Python wrote the refusals' lines and the data plane the other.
    lines = sorted((json.loads(line) for line in log_path.read_text().splitlines()), key=lambda line: line["time"])
    assert [line["status"] for line in lines] == ["UNAUTHENTICATED", "UNAUTHENTICATED", "OK"]
    expected_hash = hmac.new(b"pepper", b"alice", hashlib.sha256).hexdigest()[:32]
    assert lines[-1]["user_hash"] == expected_hash and "user" not in lines[-1]
    assert "alice" not in log_path.read_text()
