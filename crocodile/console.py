"""What a `crocodile` command shows: its own progress on the terminal, library noise in a log file.

TensorFlow's C++ runtime (CPU features, CUDA/cuDNN/TensorRT probing), absl, TFX, Beam and
the google client libraries (a FutureWarning per import about the Python version) write
hundreds of lines per command, and TensorFlow functions still alive when the interpreter
tears down print ``Exception ignored in AtomicFunction.__del__ ... TypeError`` tracebacks
(their ``__del__`` calls into modules that finalisation has already emptied).

Quiet mode (the default of the ``crocodile`` program, ``quiet()``):

- file descriptor 2, where C/C++ code and child processes write, is appended to a log
  file; children inherit it (Beam's worker processes, the demo's steps) and the
  environment (``CROCODILE_LOG_FILE``, ``TF_CPP_MIN_LOG_LEVEL``), so they do the same;
- Python's ``sys.stderr`` stays on the terminal (a duplicate of the original descriptor),
  so the command's own progress bars and error messages still show;
- ``warnings``, the ``logging`` module (absl, TFX, Beam, TensorFlow's Python logger) and
  unraisable exceptions go to the log file; the project's own loggers (``crocodile.*``:
  a server's "listening", "policy reloaded", "canary aborted" lines) show on the
  terminal as well, since they are the command's own messages;
- ``exit_process`` flushes everything and leaves with ``os._exit``: the work is done and
  every file is closed, so interpreter teardown (where the ``AtomicFunction.__del__``
  tracebacks come from) has nothing left to do.

``--verbose`` (``CROCODILE_VERBOSE=1`` for children) leaves every stream as it is.
Functions here change process-wide state; only the program entry point calls them
(tests call ``crocodile.cli.main`` and keep pytest's capture).
"""
import io
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Optional

LOG_FILE_ENV = "CROCODILE_LOG_FILE"
VERBOSE_ENV = "CROCODILE_VERBOSE"
LOG_DIR_ENV = "CROCODILE_LOG_DIR"
OWN_LOGGER = "crocodile"  # the project's loggers: shown on the terminal, not treated as noise
# 1 drops TensorFlow's C++ INFO lines (CPU features, oneDNN) even from the log file;
# warnings and errors are kept there.
TF_CPP_MIN_LOG_LEVEL = "1"

_state = {"log_file": None, "inherited": False, "log_stream": None, "handler": None}


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def log_file() -> Optional[str]:
    """The library log of this process (None in verbose mode or outside the program)."""
    return _state["log_file"]


def _default_log_file(command: str) -> str:
    """<CROCODILE_LOG_DIR or ~/.cache/crocodile/logs>/<command>-<time>-<pid>.log (a temp dir if unwritable)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{command}-{stamp}-{os.getpid()}.log"
    candidates = [os.environ.get(LOG_DIR_ENV),
                  os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                               "crocodile", "logs"),
                  os.path.join(tempfile.gettempdir(), "crocodile-logs")]
    for folder in filter(None, candidates):
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return os.path.join(folder, name)
        except OSError:
            continue
    raise OSError("no writable folder for the library log (set CROCODILE_LOG_DIR)")


def quiet(command: str, verbose: bool = False, path: Optional[str] = None) -> Optional[str]:
    """Sends library noise of this process and its children to a log file; returns its path.

    ``path`` (or ``CROCODILE_LOG_FILE`` set by a parent) names the file, appended to;
    otherwise a new file per command. Returns None, changing nothing, when verbose.
    """
    if verbose or is_verbose():
        os.environ[VERBOSE_ENV] = "1"
        return None
    inherited = bool(os.environ.get(LOG_FILE_ENV)) and path is None
    path = os.path.abspath(path or os.environ.get(LOG_FILE_ENV) or _default_log_file(command))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.environ[LOG_FILE_ENV] = path
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)

    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    console_fd = os.dup(2)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = io.TextIOWrapper(os.fdopen(console_fd, "wb", buffering=0), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    log_stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def show_warning(message, category, filename, lineno, file=None, line=None):
        _state["log_stream"].write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show_warning
    handler = logging.StreamHandler(log_stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)  # TensorFlow's and absl's loggers add no handler of their own then
    root.setLevel(logging.INFO)
    own = logging.StreamHandler(sys.stderr)  # the terminal: sys.stderr was re-pointed above
    own.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger(OWN_LOGGER).addHandler(own)

    def unraisable(info):
        stream = _state["log_stream"]
        stream.write(f"{info.err_msg or 'Exception ignored in'}: {info.object!r}\n")
        traceback.print_exception(info.exc_type, info.exc_value, info.exc_traceback, file=stream)

    sys.unraisablehook = unraisable
    _state.update(log_file=path, inherited=inherited, log_stream=log_stream, handler=handler)
    return path


def move_log(path: str) -> Optional[str]:
    """Continues this process's library log (and its future children's) in ``path``.

    What was logged so far is moved there. For commands whose output folder is known only
    once the command has checked it (the demo). No-op in verbose mode.
    """
    old_path, old_stream = _state["log_file"], _state["log_stream"]
    if old_path is None:
        return None
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old_stream.flush()
    new_stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    with open(old_path, encoding="utf-8", errors="replace") as f:
        new_stream.write(f.read())
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _state["handler"].setStream(new_stream)
    # The command names the moved log in its own summary.
    _state.update(log_file=path, log_stream=new_stream, inherited=True)
    os.environ[LOG_FILE_ENV] = path
    old_stream.close()
    os.remove(old_path)
    return path


def record_crash(error: BaseException) -> None:
    """Writes the traceback of an unexpected error to the log file."""
    stream = _state["log_stream"]
    if stream is not None:
        traceback.print_exception(type(error), error, error.__traceback__, file=stream)
        stream.flush()


def announce_log_file() -> None:
    """One line on the terminal naming the log file (not from the demo or its steps: the demo names it)."""
    path = _state["log_file"]
    if path and not _state["inherited"] and os.path.exists(path) and os.path.getsize(path) > 0:
        print(f"library logs: {path}", file=sys.stderr, flush=True)


def exit_process(code: int) -> None:
    """Flushes every stream and exits without interpreter teardown (see the module docstring)."""
    for stream in (sys.stdout, sys.stderr, _state["log_stream"]):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
