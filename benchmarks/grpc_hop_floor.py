"""The cheapest Python gRPC hop: a byte-forwarding PredictionService proxy with no routing at all.

benchmarks/serving_latency.py runs it beside the router as a reference: the router's overhead minus
this proxy's is what routing itself costs; this proxy's own overhead is what any Python hop costs on
the host (one channel to the backend, identity serializers). It passes the client's x-request-id
on, as the router does. Two server flavours, measured side by side: gRPC's synchronous server (a
thread pool; the router's) and grpc.aio (one event loop).

  python benchmarks/grpc_hop_floor.py PORT BACKEND [--aio]
"""
import argparse
import asyncio
from concurrent import futures

import grpc

SERVICE = "tensorflow.serving.PredictionService"
METHODS = ("Predict", "Regress")
REQUEST_ID_HEADER = "x-request-id"


def request_id(context) -> tuple:
    return tuple((key, value) for key, value in context.invocation_metadata() or () if key == REQUEST_ID_HEADER)


def serve_sync(port: int, backend: str) -> None:
    channel = grpc.insecure_channel(backend)
    handlers = {}
    for method in METHODS:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            lambda body, context, call=call: call(body, timeout=10, metadata=request_id(context)))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"hop floor (sync) listening on port {port}", flush=True)
    server.wait_for_termination()


async def serve_aio(port: int, backend: str) -> None:
    channel = grpc.aio.insecure_channel(backend)
    handlers = {}
    for method in METHODS:
        call = channel.unary_unary(f"/{SERVICE}/{method}")

        async def forward(body, context, call=call):
            return await call(body, timeout=10, metadata=request_id(context))
        handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"hop floor (aio) listening on port {port}", flush=True)
    await server.wait_for_termination()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("backend")
    parser.add_argument("--aio", action="store_true", help="grpc.aio server and channel instead of the sync ones")
    args = parser.parse_args()
    if args.aio:
        asyncio.run(serve_aio(args.port, args.backend))
    else:
        serve_sync(args.port, args.backend)


if __name__ == "__main__":
    main()
