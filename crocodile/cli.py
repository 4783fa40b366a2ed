"""The ``crocodile`` command: one entry point, one subcommand family per area.

Each area keeps its own commands in its ``cli`` module and exposes
``register(subparsers)``. Registration only builds argparse parsers; TensorFlow and
the other heavy imports happen inside the command handlers, so ``crocodile --help``
stays fast.
"""
import argparse
import importlib
import sys

from crocodile.errors import UserError

# Order is the order in `crocodile --help`.
AREA_CLI_MODULES = (
    "crocodile.simulation.cli",   # data generate|describe|convert
    "crocodile.simulation.abtest_cli",  # abtest live|offline
    "crocodile.benchmarks.cli",        # benchmark quality|speed
    "crocodile.pipeline.cli",     # pipeline run|compile
    "crocodile.pipeline.model_cli",  # model compare
    "crocodile.serving.cli",      # model-server, router, score, rollout
    "crocodile.demo",             # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crocodile",
        description="Multi-domain CTR ranking: data, TFX pipeline, serving, canary A/B.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in AREA_CLI_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except UserError as error:  # bad input: a clear message, no traceback
        print(f"crocodile {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
