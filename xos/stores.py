"""Stores chosen by URL. Every daemon keeps its state behind a Protocol (node.store.NodeStore, vo.store.VOStore,
aem.jobs.JobStore, fs.mrc.catalogue.Catalogue) with its implementations registered by scheme in that module's
BACKENDS; SQLite (`sqlite:///PATH`, or a plain path) is the default, so one machine needs no server; PostgreSQL
(`postgresql://...`, xos.pg) keeps it on a server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from xos.errors import InvalidInput

T = TypeVar("T")


def open_url(what: str, backends: Mapping[str, Callable[[str], T]], url: str) -> T:
    """The store `url` names: `SCHEME://REST` by its scheme's backend, a plain path by SQLite's. SQLite's opens
    REST less a leading '/' (sqlite:////var/lib/xos/x.db is /var/lib/xos/x.db); PostgreSQL's the whole URL
    (postgresql://xos@db.example.org/xos, or ?host=/run/postgresql for its Unix socket)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "sqlite", url
    elif scheme == "sqlite":
        rest = rest[1:] if rest.startswith("/") else rest
    if scheme not in backends:
        raise InvalidInput(f"no {what} store for {scheme!r}: use one of {', '.join(sorted(backends))}", field="db")
    return backends[scheme](rest if scheme == "sqlite" else url)


def sqlite_file(url: str) -> str:
    """The file a SQLite store's URL names (as open_url reads it); empty for another engine's."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme != "sqlite":
        return ""
    return rest[1:] if rest.startswith("/") else rest
