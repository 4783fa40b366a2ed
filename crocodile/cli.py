"""The ``crocodile`` command: one entry point, one subcommand family per area.

Each area keeps its own commands in its ``cli`` module and exposes
``register(subparsers)``. Registration only builds argparse parsers; TensorFlow and
the other heavy imports happen inside the command handlers, so ``crocodile --help``
stays fast.

``run`` is the program (console script, ``python -m crocodile``): it sends library noise
to a log file unless ``--verbose`` is given (crocodile.console) and exits without
interpreter teardown. ``main`` is the same command without either, for tests.
"""
import argparse
import importlib
import sys

from crocodile import console
from crocodile.errors import UserError

# Flags every command takes, wherever they stand on the command line.
GLOBAL_FLAGS = ("--verbose",)

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
    parser.add_argument("--verbose", action="store_true",
                        help="show library logs (TensorFlow, TFX, Beam, warnings) on the terminal instead "
                             "of writing them to a log file; may stand anywhere on the command line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in AREA_CLI_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _global_flags_first(argv):
    """Moves the global flags to the front, where argparse expects them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [a for a in argv if a in GLOBAL_FLAGS] + [a for a in argv if a not in GLOBAL_FLAGS]


def main(argv=None, quiet: bool = False) -> int:
    """Runs one command; with ``quiet``, library noise goes to a log file (crocodile.console)."""
    args = build_parser().parse_args(_global_flags_first(argv))
    if quiet:
        console.quiet(args.command, verbose=args.verbose)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except UserError as error:  # bad input: a clear message, no traceback
        print(f"crocodile {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a crash: one line here, the traceback in the log
        if console.log_file() is None:
            raise
        console.record_crash(error)
        print(f"crocodile {args.command}: failed: {type(error).__name__}: {error}\n"
              f"  traceback and library logs: {console.log_file()}", file=sys.stderr)
        return 1
    console.announce_log_file()
    return int(result or 0)


def run() -> None:
    """The `crocodile` program."""
    console.exit_process(main(quiet=True))


if __name__ == "__main__":
    run()
