"""Settings of the local OpenWhisk-compatible server: one frozen object, defaults as OpenWhisk's.

Every field has a command line flag (``ServerSettings.to_argv`` and ``main.settings_from_args``
are the two directions), so a parent process can start a server with exactly these settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: the key of standalone OpenWhisk's "guest" namespace (``uuid:key``)
GUEST_AUTH = (
    "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:"
    "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"
)

#: environment variable that passes the API key to ``dask-whisk server`` (kept off command lines)
AUTH_ENV = "DASK_WHISK_SERVER_AUTH"
#: the server's first stdout line starts with this, followed by its URL
READY_PREFIX = "dask-whisk server listening on "

#: fault kinds the test-only fault mode can inject (see ``faults.py``)
FAULT_KINDS = (
    "application error",
    "action developer error",
    "whisk internal error",
    "crash",
    "429",
    "503",
    "drop",  # the activation runs, but the invoke's connection closes without an answer
)


@dataclass(frozen=True)
class FaultSettings:
    """Test-only fault injection; all rates 0 (off) by default, never faithful behaviour."""

    fault_rate: float = 0.0  # probability an invoke gets one of ``kinds``
    kinds: tuple[str, ...] = FAULT_KINDS
    hang_rate: float = 0.0  # probability an activation hangs until its time limit
    latency_ms: int = 0  # added to every invoke request
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("fault_rate", "hang_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {list(FAULT_KINDS)}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens, whom it admits, and its limits (OpenWhisk's code defaults)."""

    host: str = "127.0.0.1"
    port: int = 3233
    auth: str = GUEST_AUTH
    namespace: str = "guest"
    invocations_per_minute: int = 60
    concurrent_invocations: int = 30
    user_memory_mb: int = 2048
    min_memory_mb: int = 128
    max_memory_mb: int = 512
    default_memory_mb: int = 256
    min_timeout_ms: int = 100
    max_timeout_ms: int = 300_000
    default_timeout_ms: int = 60_000
    max_logs_mb: int = 10
    default_logs_mb: int = 10
    max_payload_bytes: int = 1_048_576
    max_code_bytes: int = 48 * 1024 * 1024
    max_blocking_wait_ms: int = 60_000
    idle_container_seconds: float = 600.0
    max_activation_records: int = 100_000
    memory_poll_ms: int = 100
    #: blackbox images this server can run: image name -> the Python interpreter of an
    #: environment with the image's packages installed (its local stand-in)
    images: dict[str, str] = field(default_factory=dict)
    faults: FaultSettings = field(default_factory=FaultSettings)

    def __post_init__(self) -> None:
        uuid, sep, key = self.auth.partition(":")
        if not sep or not uuid or not key:
            raise ValueError("auth must be 'uuid:key' (the form of an OpenWhisk API key)")
        checks = {
            "invocations_per_minute": self.invocations_per_minute >= 1,
            "concurrent_invocations": self.concurrent_invocations >= 1,
            "user_memory_mb": self.user_memory_mb >= self.min_memory_mb,
            "memory range": self.min_memory_mb <= self.default_memory_mb <= self.max_memory_mb,
            "timeout range": self.min_timeout_ms <= self.default_timeout_ms <= self.max_timeout_ms,
            "logs range": 0 <= self.default_logs_mb <= self.max_logs_mb,
            "idle_container_seconds": self.idle_container_seconds > 0,
            "max_blocking_wait_ms": self.max_blocking_wait_ms > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"inconsistent server settings: {', '.join(bad)} ({self!r})")

    def __repr__(self) -> str:
        # the API key never appears in logs or exceptions
        fields = ", ".join(
            f"{f.name}={'<hidden>' if f.name == 'auth' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"ServerSettings({fields})"

    def to_argv(self) -> list[str]:
        """Command line flags of ``dask-whisk server`` that reproduce these settings.

        The API key is left out (command lines are visible to every local user): pass it in
        the ``DASK_WHISK_SERVER_AUTH`` environment variable instead.
        """
        argv = [
            "--host", self.host, "--port", str(self.port),
            "--namespace", self.namespace,
            "--invocations-per-minute", str(self.invocations_per_minute),
            "--concurrent-invocations", str(self.concurrent_invocations),
            "--user-memory", str(self.user_memory_mb),
            "--min-memory", str(self.min_memory_mb), "--max-memory", str(self.max_memory_mb),
            "--default-memory", str(self.default_memory_mb),
            "--min-timeout", str(self.min_timeout_ms), "--max-timeout", str(self.max_timeout_ms),
            "--default-timeout", str(self.default_timeout_ms),
            "--max-logs", str(self.max_logs_mb), "--default-logs", str(self.default_logs_mb),
            "--max-payload", str(self.max_payload_bytes), "--max-code", str(self.max_code_bytes),
            "--max-blocking-wait", str(self.max_blocking_wait_ms),
            "--idle-container-seconds", str(self.idle_container_seconds),
            "--max-activation-records", str(self.max_activation_records),
            "--memory-poll-ms", str(self.memory_poll_ms),
            "--fault-rate", str(self.faults.fault_rate),
            "--fault-kinds", ",".join(self.faults.kinds),
            "--hang-rate", str(self.faults.hang_rate),
            "--latency-ms", str(self.faults.latency_ms),
        ]
        if self.faults.seed is not None:
            argv += ["--seed", str(self.faults.seed)]
        for name, python in self.images.items():
            argv += ["--image", f"{name}={python}"]
        return argv
