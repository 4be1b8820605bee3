"""A cap on request-body bytes held in memory at once, across all requests.

Each upload is bounded by web_server.max_body_bytes, but a burst of many large uploads
could still hold gigabytes before any reaches the queue. Past this budget a request is
drained without buffering and answered 503 + Retry-After, so memory stays bounded.
"""

from __future__ import annotations


class UploadBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            self.refused += 1
            return False
        self.used += size
        return True

    def fits(self, size: int) -> bool:
        """Whether `size` more bytes would be taken now (a refusal is counted)."""
        if self.used + size > self.limit:
            self.refused += 1
            return False
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)
