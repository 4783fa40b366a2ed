"""The cheapest Python gRPC hop: a byte-forwarding PredictionService proxy with no routing at all.

benchmarks/serving_latency.py runs it beside the router as a reference: the router's overhead minus
this proxy's is what routing itself costs; this proxy's own overhead is what any Python hop costs on
the host (synchronous gRPC server, one channel to the backend, identity serializers).

  python benchmarks/grpc_hop_floor.py PORT BACKEND
"""
import sys
from concurrent import futures

import grpc

SERVICE = "tensorflow.serving.PredictionService"


def main():
    port, backend = int(sys.argv[1]), sys.argv[2]
    channel = grpc.insecure_channel(backend)
    handlers = {}
    for method in ("Predict", "Regress"):
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            lambda body, context, call=call: call(body, timeout=10))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"hop floor listening on port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
