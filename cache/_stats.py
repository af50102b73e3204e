"""A snapshot of the cache's usage and counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Usage and hit counters of a `BlockCache` at one moment.

    ``used`` counts block contents in bytes (not file-system overhead or the
    index database).  ``protected_bytes`` is the part of ``used`` held by blocks
    this process has protected; it is never reclaimable, so ``used`` may exceed
    ``limit`` when protected data alone does.  ``hits`` and ``misses`` are
    persisted in the cache directory and shared by every process that opens it.
    """

    used: int
    limit: int
    protected_bytes: int
    count: int
    hits: int
    misses: int
    #: How many of the ``count`` blocks are protected.
    protected_count: int = 0

    @property
    def reclaimable(self) -> int:
        """Bytes an eviction to zero would free."""
        return max(self.used - self.protected_bytes, 0)

    @property
    def reclaimable_count(self) -> int:
        """Blocks an eviction to zero would remove."""
        return max(self.count - self.protected_count, 0)

    @property
    def hit_rate(self) -> float | None:
        """Hits per read of the cache, or None before the first read."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else None

    @property
    def over_limit(self) -> bool:
        """True when usage exceeds the limit (only protected data can cause this for long)."""
        return self.used > self.limit
