"""Submission rate limits per credential: a token bucket per API key.

Each key may submit `rate_per_s` payments a second on average and `burst` at once; past
that the intake answers 429 `rate-limited` with `Retry-After`, before anything is
published. A document counts each of its payments. The buckets live in one intake
process: with several replicas behind a load balancer each enforces its own share.
Pure (time comes in as an argument), so it is tested without a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class SubmissionRateLimit:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, payments: int, now: float) -> int | None:
        """None if the key may submit `payments` now (they are counted), else the
        seconds to wait before asking again."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) > 100_000:  # bounded whatever the number of keys
                self._buckets.clear()
            bucket = self._buckets[key_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        # A document larger than the burst is allowed once the bucket is full.
        wanted = min(payments, self.burst)
        if bucket.tokens >= wanted:
            bucket.tokens -= wanted
            return None
        return max(1, math.ceil((wanted - bucket.tokens) / self.rate_per_s))
