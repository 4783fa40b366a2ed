"""Write an output folder all at once: stage it next to the target, rename at the end.

Nothing partial ever lands in the target, and an existing non-empty target is never
touched, so no stored data can be lost by a failed or repeated run.
"""
import contextlib
import os
import shutil
import tempfile

from crocodile.errors import UserError


def check_output_dir(out: str, flag: str = "--out") -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{flag} {out}: already exists and is not an empty folder; choose a new path")


@contextlib.contextmanager
def staged_output_dir(out: str, flag: str = "--out"):
    """Yields a temporary folder beside ``out``; renamed to ``out`` only if the block succeeds."""
    check_output_dir(out, flag)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.partial-", dir=parent)
    try:
        yield staging
        check_output_dir(out, flag)  # someone may have written there meanwhile
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(staging, out)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
