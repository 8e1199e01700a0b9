"""Live progress of whisk jobs in a Jupyter notebook, opt-in like Dask's ``ProgressBar``.

``with NotebookProgress(): x.compute(scheduler="whisk")`` keeps one line in the cell's output up
to date: tasks done of all, tasks in flight, activation attempts retried and failed. It reads the
state dict Dask's callbacks share and the running job's report; nothing is added per task to
the dispatch path. Outside a notebook it prints the final line once (use ``ProgressBar`` there).
"""
from __future__ import annotations

import html
import threading
from typing import Any

from dask.callbacks import Callback

from . import diagnostics


class Snapshot:
    """Counts at one instant, shown as HTML in a notebook and as text elsewhere."""

    def __init__(self, done: int, total: int, running: int, retried: int, failed: int) -> None:
        self.done, self.total, self.running, self.retried, self.failed = done, total, running, retried, failed

    def __repr__(self) -> str:
        return (f"dask-whisk: {self.done} of {self.total} tasks done, {self.running} in flight, "
                f"{self.retried} attempts retried, {self.failed} failed")

    def _repr_html_(self) -> str:
        share = 100 * self.done // max(1, self.total)
        bar = (f"<progress value='{self.done}' max='{max(1, self.total)}' style='width:20em'></progress>")
        return f"{bar} {share}% &nbsp; <code>{html.escape(repr(self))}</code>"


class NotebookProgress(Callback):
    """A Dask callback that shows a job's progress live in Jupyter (refreshed every ``interval`` s)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__()
        self.interval = interval
        self._state: dict[str, Any] = {}
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> Snapshot:
        """The counts now, from the scheduler's state and the running job's attempts."""
        state = self._state
        done, running = len(state.get("finished", ())), len(state.get("running", ()))
        total = len(state.get("dependencies", ()))
        report = diagnostics.running_report()
        outcomes = [a["outcome"] for a in report.attempts] if report is not None else []
        return Snapshot(done, total, running, outcomes.count("retried") + outcomes.count("lost"),
                        outcomes.count("failed"))

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        from IPython.display import display

        self._state = state
        self._handle = display(self.snapshot(), display_id=True)  # None outside a notebook
        if self._handle is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._refresh, daemon=True, name="dask-whisk-progress")
            self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.interval):
            self._handle.update(self.snapshot())

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._handle.update(self.snapshot())
        else:
            print(repr(self.snapshot()))
