"""Training speed (same as `crocodile benchmark speed`): examples/s of crocodile with the
covariance loss, without it, and MMoE, interleaved, with paired ratios; prints JSON."""
import argparse
import sys

import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from crocodile.benchmarks.cli import add_speed_arguments, run_speed
from crocodile.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_speed_arguments(parser)
    try:
        sys.exit(run_speed(parser.parse_args()))
    except UserError as error:
        print(f"training_speed: error: {error}", file=sys.stderr)
        sys.exit(2)
