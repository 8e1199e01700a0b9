"""Run the server in the current event loop: bind, start the invoker, stop everything after.

``async with LocalWhisk(settings) as url:`` serves until the block ends; the ``dask-whisk
server`` command and the subprocess form (``process.py``) use it too.
"""
from __future__ import annotations

from aiohttp import web

from .api import WHISK_KEY, make_app
from .runtimes import discover
from .settings import ServerSettings


class LocalWhisk:
    """The local OpenWhisk-compatible server, as an async context manager yielding its URL."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = make_app(self.settings, await discover())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port,
                           backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        port = self._runner.addresses[0][1]
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.url = f"http://{host}:{port}"
        await app[WHISK_KEY].invoker.start(self.url)
        return self.url

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            # activations first: requests still waiting on them then end at once, so shutting
            # down never waits for an activation's time limit (a real deployment's would go on)
            await self._runner.app[WHISK_KEY].invoker.stop()
            await self._runner.cleanup()
