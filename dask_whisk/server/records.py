"""Finished activation records, kept in memory, newest first, as OpenWhisk's activation store.

A record is written when its activation finishes, so a poller sees 404 until then. The oldest
records are dropped past ``max_records`` to bound the server's memory.
"""
from __future__ import annotations

from collections import OrderedDict


class ActivationRecords:
    """Completed activation records by id, in completion order."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._records: OrderedDict[str, dict] = OrderedDict()

    def add(self, record: dict) -> None:
        """Keep ``record``, dropping the oldest beyond ``max_records``."""
        self._records[record["activationId"]] = record
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)

    def get(self, activation_id: str) -> dict | None:
        """The record of ``activation_id``, or None."""
        return self._records.get(activation_id)

    def query(self, *, name: str | None, since: int | None, upto: int | None,
              skip: int, limit: int) -> list[dict]:
        """Records newest first, filtered by action name and start time (epoch ms)."""
        selected: list[dict] = []
        skipped = 0
        for record in reversed(self._records.values()):
            if name is not None and record["name"] != name:
                continue
            if since is not None and record["start"] < since:
                continue
            if upto is not None and record["start"] > upto:
                continue
            if skipped < skip:
                skipped += 1
                continue
            selected.append(record)
            if len(selected) >= limit:
                break
        return selected
