"""Errors shared by every area."""


class UserError(Exception):
    """A problem with what the user gave (files, flags, data), printed without a traceback.

    The message must name the problem: the file, the column, the row or the flag.
    """
