"""Reloads the router's policy when its file changes or on SIGHUP.

A thread compares the file's (mtime, size, inode) every ``poll_s`` seconds and calls
``Router.reload_policy`` on a change or when ``trigger()`` is called (the CLI's SIGHUP handler).
The router swaps its whole state in one assignment, so a request sees the old policy or the new
one, never a mix; a file that fails validation leaves the old policy in force and the router logs
why. Kubernetes ConfigMap updates replace the file through a symlink swap, which changes the inode.
"""
import logging
import os
import threading

log = logging.getLogger(__name__)


def _signature(path: str):
    try:
        info = os.stat(path)
    except OSError as error:
        return ("missing", error.strerror)
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class PolicyWatcher:
    def __init__(self, router, path: str, poll_s: float):
        self.router, self.path, self.poll_s = router, path, poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last = _signature(path)
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)

    def start(self) -> "PolicyWatcher":
        self._thread.start()
        return self

    def trigger(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            current = _signature(self.path)
            if woken or current != self._last:
                self._last = current
                log.info("policy file %s: %s, reloading", self.path, "SIGHUP" if woken else "changed on disk")
                self.router.reload_policy(self.path)
