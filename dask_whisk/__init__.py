"""dask-whisk: run Dask graphs as Apache OpenWhisk activations, data through OpenStack Swift.

``dask.compute(x, scheduler=whisk_get)``, or ``scheduler="whisk"`` once this package is imported.
This module stays light: the worker action imports the package for its wire protocol, so the
scheduler and its HTTP stack are imported only when a job runs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import config  # noqa: F401  (registers the whisk.* dask config defaults at import)

__version__ = "0.1.0"


def whisk_get(dsk: Mapping | Any, keys: Sequence | Any, **kwargs: Any) -> Any:
    """Dask scheduler: compute ``keys`` of ``dsk``, each work unit an OpenWhisk activation."""
    from .scheduler import get

    return get(dsk, keys, **kwargs)


def last_report() -> Any:
    """The :class:`~dask_whisk.diagnostics.JobReport` of the last ``whisk_get`` job (None before any)."""
    from .diagnostics import last_report

    return last_report()


def report() -> Any:
    """``with dask_whisk.report() as r: dask.compute(...)``: ``r`` is then the
    :class:`~dask_whisk.diagnostics.JobReport` of the jobs the block ran, combined."""
    from .diagnostics import report

    return report()


def _register() -> None:
    """Make ``scheduler="whisk"`` work the way ``"threads"`` or ``"sync"`` do."""
    try:
        from dask.base import named_schedulers
    except ImportError:  # the worker action may run without dask.base importable; nothing to do
        return
    named_schedulers.setdefault("whisk", whisk_get)


_register()

__all__ = ["whisk_get", "last_report", "report", "__version__"]
