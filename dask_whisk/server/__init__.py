"""The local OpenWhisk-compatible server: REST API, invoker, containers as OS processes.

``start_server_process(ServerSettings(...))`` runs one as a child process (``.url``, ``.auth``,
``.stop()``); ``LocalWhisk`` (in ``dask_whisk.server.local``) runs one in the current event loop.
Importing this package stays light: aiohttp is imported only by the modules that serve.
"""
from __future__ import annotations

from .process import ServerProcess, start_server_process
from .settings import GUEST_AUTH, FaultSettings, ServerSettings

__all__ = ["ServerSettings", "FaultSettings", "GUEST_AUTH", "ServerProcess", "start_server_process"]
