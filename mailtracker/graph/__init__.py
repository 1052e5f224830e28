"""Microsoft 365 through Microsoft Graph (issue 14, docs/graph.md).

``graph/http.py`` is the only module that imports httpx; ``inbound/graph.py`` reads the
mailbox, ``outbound/graph_send.py`` sends from it. :func:`open_client` wires the ``[graph]``
settings to tokens from ``[oauth2]`` with ``[graph] scopes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from mailtracker.errors import ConfigError

if TYPE_CHECKING:
    from mailtracker.graph.http import GraphClient
    from mailtracker.settings.config import Settings
    from mailtracker.settings.graphconfig import GraphSettings
    from mailtracker.settings.oauth2 import AccessToken


def graph_settings(settings: Settings) -> GraphSettings:
    if settings.graph is None:
        raise ConfigError("no [graph] section", path=settings.path, key="graph")
    return settings.graph


def open_client(settings: Settings, environ: Mapping[str, str]) -> GraphClient:
    """A :class:`GraphClient` for ``[graph]`` with tokens from ``[oauth2]``."""
    from mailtracker.graph.http import GraphClient
    from mailtracker.settings.oauth2 import TokenProvider

    graph = graph_settings(settings)
    if settings.oauth2 is None:
        raise ConfigError("[graph] needs an [oauth2] section", path=settings.path,
                          key="oauth2")
    provider = TokenProvider(replace(settings.oauth2, scopes=graph.scopes), environ)

    def tokens(force: bool) -> AccessToken:
        return provider.token(force_refresh=force)

    return GraphClient(graph, tokens)
