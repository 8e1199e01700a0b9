"""Test-only fault injection: failures real deployments show, at a chosen rate, off by default.

Nothing here is faithful OpenWhisk behaviour; it lets a client's retry and recovery paths be
exercised against the local server. Every injected error message says it was injected.
"""
from __future__ import annotations

import random

from .settings import FaultSettings

#: kinds that end an accepted activation (the others, 429 and 503, reject the invoke request)
ACTIVATION_FAULTS = ("application error", "action developer error", "whisk internal error", "crash")


class FaultInjector:
    """Draws faults for invoke requests and activations from one seeded random generator."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._random = random.Random(settings.seed)

    @property
    def latency_seconds(self) -> float:
        """Latency added to every invoke request."""
        return self.settings.latency_ms / 1000.0

    def draw(self) -> str | None:
        """The fault (one of the configured kinds) to inject into this invoke, or None."""
        if self.settings.fault_rate <= 0 or not self.settings.kinds:
            return None
        if self._random.random() >= self.settings.fault_rate:
            return None
        return self._random.choice(self.settings.kinds)

    def hangs(self) -> bool:
        """Whether this activation hangs until its time limit."""
        return self.settings.hang_rate > 0 and self._random.random() < self.settings.hang_rate
