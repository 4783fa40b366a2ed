"""The canary's circuit breaker: stops canary assignment when the canary breaches its limits.

It watches the outcomes of the router's calls to the canary (not the client's answers: a canary
failure answered by stable still counts here) over a sliding time window. Once the window holds
``min_requests`` calls, it trips when the failed share exceeds ``max_error_rate`` or the p99 of
the calls' latencies exceeds ``max_p99_ms``. A tripped breaker stays tripped: only a changed
policy (a new ``CanaryBreaker``) assigns users to the canary again, so a flapping canary cannot
re-enter by itself (I).

p99 is the nearest-rank percentile of the window's latencies, recomputed at most every
``P99_EVERY_S`` (the error rate on every call): an exact p99 per call would cost O(window).
"""
import collections
import heapq
import math
import threading
import time
from typing import Optional

from crocodile.serving.policy import CanaryAbort

P99_EVERY_S = 0.1


class CanaryBreaker:
    def __init__(self, rule: Optional[CanaryAbort], clock=time.monotonic):
        self.rule = rule
        self._clock = clock
        self._calls = collections.deque()  # (time, failed, latency_ms)
        self._failed = 0
        self._next_p99 = 0.0
        self._lock = threading.Lock()
        self.tripped: Optional[str] = None  # the reason, once tripped; read on the request path

    def observe(self, failed: bool, latency_ms: float) -> Optional[str]:
        """Records one canary call; returns the reason when this call trips the breaker."""
        if self.rule is None or self.tripped is not None:
            return None
        with self._lock:
            if self.tripped is not None:
                return None
            now = self._clock()
            calls, rule = self._calls, self.rule
            calls.append((now, failed, latency_ms))
            self._failed += failed
            while calls and calls[0][0] < now - rule.window_s:
                self._failed -= calls.popleft()[1]
            n = len(calls)
            if n < rule.min_requests:
                return None
            reason = None
            if rule.max_error_rate is not None and self._failed / n > rule.max_error_rate:
                reason = (f"canary error rate {self._failed}/{n} = {self._failed / n:.3f} > max_error_rate "
                          f"{rule.max_error_rate} over the last {rule.window_s:g} s")
            elif rule.max_p99_ms is not None and now >= self._next_p99:
                self._next_p99 = now + P99_EVERY_S
                p99 = nearest_rank_p99([c[2] for c in calls])
                if p99 > rule.max_p99_ms:
                    reason = (f"canary p99 latency {p99:.1f} ms > max_p99_ms {rule.max_p99_ms:g} over the last "
                              f"{n} calls ({rule.window_s:g} s)")
            if reason is not None:
                self.tripped = reason
            return reason


def nearest_rank_p99(values) -> float:
    """The smallest value with at least 99% of the values at or below it."""
    n = len(values)
    above = n - math.ceil(0.99 * n) + 1  # how many values are >= the p99
    return heapq.nlargest(above, values)[-1]
