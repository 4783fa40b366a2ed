"""Offline quality benchmark (same as `crocodile benchmark quality`); prints the Markdown
report. Without --data it generates world logs under OUT/data first.

    python benchmarks/quality.py --data DIR --models crocodile,mmoe --seeds 2 --out /tmp/quality
"""
import argparse
import sys

import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from crocodile.errors import UserError
from crocodile.benchmarks.cli import add_quality_arguments, run_quality

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_quality_arguments(parser)
    if "--out" not in " ".join(sys.argv):
        sys.argv += ["--out", "/tmp/crocodile_quality"]
    try:
        sys.exit(run_quality(parser.parse_args()))
    except UserError as error:
        print(f"quality: error: {error}", file=sys.stderr)
        sys.exit(2)
