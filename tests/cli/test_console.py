"""Quiet output of the `crocodile` program (crocodile.console), checked in real child processes.

A script stands in for a command: it calls ``console.quiet`` as the program does, then
makes noise the way the libraries do (a C-level write to descriptor 2, a FutureWarning,
an absl/logging record, an unraisable exception, a child process writing to its stderr)
and prints its own progress to stdout and sys.stderr. The terminal must show only the
progress; the log file must hold the noise.
"""
import os
import subprocess
import sys
import textwrap

NOISY_SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from crocodile import console

    path = console.quiet("probe", verbose={verbose})
    print("progress on stdout", flush=True)
    print("progress on stderr", file=sys.stderr, flush=True)
    os.write(2, b"C-LEVEL NOISE\\n")
    warnings.warn("PYTHON VERSION NOISE", FutureWarning)
    logging.getLogger("absl").warning("ABSL NOISE")
    logging.getLogger("crocodile.serving.router").info("OWN MESSAGE")

    class Finalizer:
        def __del__(self):
            raise TypeError("'NoneType' object is not callable (UNRAISABLE NOISE)")

    Finalizer()
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('CHILD NOISE\\\\n')"], check=True)
    console.announce_log_file()
    console.exit_process(3)
""")
NOISE = ("C-LEVEL NOISE", "PYTHON VERSION NOISE", "ABSL NOISE", "UNRAISABLE NOISE", "CHILD NOISE")


def run_script(tmp_path, verbose: bool):
    env = dict(os.environ, CROCODILE_LOG_DIR=str(tmp_path / "logs"))
    env.pop("CROCODILE_LOG_FILE", None)
    env.pop("CROCODILE_VERBOSE", None)
    return subprocess.run([sys.executable, "-c", NOISY_SCRIPT.format(verbose=verbose)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_quiet_mode_keeps_progress_on_the_terminal_and_noise_in_the_log(tmp_path):
    result = run_script(tmp_path, verbose=False)
    assert result.returncode == 3  # exit_process keeps the command's exit status
    assert result.stdout == "progress on stdout\n"
    logs = os.listdir(tmp_path / "logs")
    assert len(logs) == 1 and logs[0].startswith("probe-")
    log_path = str(tmp_path / "logs" / logs[0])
    own, rest = result.stderr.split("\n", 2)[1], result.stderr.split("\n", 2)[::2]
    assert own.endswith("INFO crocodile.serving.router: OWN MESSAGE")  # the project's own log line
    assert rest == ["progress on stderr", f"library logs: {log_path}\n"]
    with open(log_path) as f:
        log = f.read()
    for noise in NOISE:
        assert noise in log


def test_verbose_mode_changes_nothing(tmp_path):
    result = run_script(tmp_path, verbose=True)
    assert result.returncode == 3
    for noise in ("C-LEVEL NOISE", "PYTHON VERSION NOISE", "UNRAISABLE NOISE", "CHILD NOISE"):
        assert noise in result.stderr
    assert not os.path.exists(tmp_path / "logs")


def test_children_append_to_the_parents_log_and_stay_quiet(tmp_path):
    """A `crocodile` child (as the demo runs them) inherits the log file through the environment."""
    log_path = tmp_path / "demo" / "library.log"
    env = dict(os.environ, CROCODILE_LOG_FILE=str(log_path))
    env.pop("CROCODILE_VERBOSE", None)
    result = subprocess.run([sys.executable, "-m", "crocodile", "abtest", "offline", "--stable", "s",
                             "--policy", "p", "--world", str(tmp_path / "none"), "--impressions", "0",
                             "--report", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    # The error names the problem on the terminal; no pointer to the log (the parent names it).
    assert result.stderr.strip() == "crocodile abtest: error: --impressions must be a positive integer, got 0"
    assert log_path.exists()


def test_verbose_flag_may_stand_anywhere():
    from crocodile.cli import _global_flags_first, build_parser

    args = build_parser().parse_args(_global_flags_first(["data", "describe", "DIR", "--verbose"]))
    assert args.verbose and args.data_dir == "DIR"
    args = build_parser().parse_args(_global_flags_first(["data", "describe", "DIR"]))
    assert not args.verbose
