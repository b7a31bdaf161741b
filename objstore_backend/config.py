"""The store's settings: one frozen value, checked when it is made, read from any source.

Inside Airflow they come from the ``[objstore_backend]`` section of airflow.cfg (so also
``AIRFLOW__OBJSTORE_BACKEND__<KEY>`` env vars), read by :mod:`objstore_backend.backend`;
the GC and audit commands take them from flags or ``OBJSTORE_BACKEND_<KEY>`` env vars,
without Airflow installed.

=================  ===========================================================================
key                meaning
=================  ===========================================================================
path               base URL (``s3://bucket/prefix/``, ``gs://...``, ``abfs://container/prefix/``,
                   a local directory). An Airflow connection id in the user part,
                   ``s3://aws_default@bucket/prefix/``, supplies credentials inside Airflow.
                   Empty: ``$AIRFLOW_HOME/state_store``.
storage_options    JSON object passed to the fsspec filesystem (e.g. ``{"endpoint_url": ...}``).
threshold_bytes    offload mode: values whose JSON is smaller stay inline in Airflow's DB
                   reference and cost no request. 0 (default) always offloads.
compression        ``none`` (default) or ``gzip``; readers recognise either whatever is set.
=================  ===========================================================================
"""

from __future__ import annotations

import configparser
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from objstore_backend.codec import COMPRESSIONS

__all__ = [
    "ENV_PREFIX",
    "AirflowSetting",
    "airflow_section",
    "SECTION",
    "StoreSettings",
    "embedded_default_path",
    "parse_storage_options",
    "redact_url",
    "split_connection_id",
]

SECTION = "objstore_backend"
ENV_PREFIX = "OBJSTORE_BACKEND_"
AIRFLOW_ENV_PREFIX = f"AIRFLOW__{SECTION.upper()}__"
KEYS = ("path", "storage_options", "threshold_bytes", "compression")


@dataclass(frozen=True)
class AirflowSetting:
    """One airflow.cfg option as read without Airflow, with where it came from (for error messages)."""

    value: str
    source: str  # the env var's name, or "[section] key in /path/airflow.cfg"


def airflow_section(section: str, environ: Mapping[str, str] | None = None) -> dict[str, AirflowSetting]:
    """An airflow.cfg section as Airflow resolves it, without Airflow: each ``AIRFLOW__<SECTION>__<KEY>``
    env var over the file ``$AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME/airflow.cfg`` (``~/airflow``).

    Airflow's ``_CMD`` and ``_SECRET`` variants are not read: Airflow honours them only for
    sensitive options, and the sections read here have none. A file that does not parse is a
    ValueError naming it.
    """
    environ = os.environ if environ is None else environ
    home = environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    path = environ.get("AIRFLOW_CONFIG") or os.path.join(home, "airflow.cfg")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ValueError(f"{path} does not parse: {exc}") from exc
    settings = {
        key: AirflowSetting(value, f"[{section}] {key} in {path}")
        for key, value in (parser.items(section) if parser.has_section(section) else [])
    }
    env_prefix = f"AIRFLOW__{section.replace('.', '_').upper()}__"
    for name, value in environ.items():
        if name.startswith(env_prefix):
            settings[name[len(env_prefix) :].lower()] = AirflowSetting(value, name)
    return settings


def embedded_default_path() -> str:
    """A directory under ``AIRFLOW_HOME``: zero set-up, like Airflow's SQLite default."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return os.path.join(home, "state_store")


#: What an Airflow connection id may hold (Airflow's own rule), less ":" and "/": in a URL's
#: user part, ``user:password@`` is a credential, never a connection id.
_CONNECTION_ID = re.compile(r"[\w#!().-]{1,250}")


def redact_url(url: str) -> str:
    """``url`` with whatever is before ``@`` in its authority shown as ``***``: for messages."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


#: ``abfss://container@ACCOUNT.dfs.core.windows.net/``: Azure's own URL form, whose user part is the container.
_AZURE_ACCOUNT_HOST = re.compile(r"(?P<account>[a-z0-9]{3,24})\.(?:dfs|blob)\.core\.windows\.net", re.IGNORECASE)


def split_connection_id(url: str) -> tuple[str | None, str]:
    """``s3://conn@bucket/p`` -> ``("conn", "s3://bucket/p")``; plain URLs pass through.

    A user part that is no connection id (``KEY:SECRET@``, credentials written into the URL)
    is refused with an error that repeats neither part.
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc or _AZURE_ACCOUNT_HOST.fullmatch(parts.netloc.rpartition("@")[2]):
        return None, url
    conn_id, _, host = parts.netloc.rpartition("@")
    if conn_id and not _CONNECTION_ID.fullmatch(conn_id):
        raise ValueError(
            f"[{SECTION}] path {redact_url(url)}: the part before '@' is not an Airflow connection id "
            "(letters, digits and _ - . # ! ( ) only), and credentials are never taken from the URL. "
            "Give them in storage_options, or name an Airflow connection (s3://aws_default@bucket/...)"
        )
    return conn_id or None, urlunsplit(parts._replace(netloc=host))


def _azure_account_url(url: str) -> tuple[str, dict[str, Any]]:
    """``abfss://c@acct.dfs.core.windows.net/p`` -> ``("abfss://c/p", {"account_name": "acct"})``; others pass."""
    parts = urlsplit(url)
    container, _, host = parts.netloc.rpartition("@")
    account = _AZURE_ACCOUNT_HOST.fullmatch(host)
    if not parts.scheme or not container or account is None:
        return url, {}
    return urlunsplit(parts._replace(netloc=container)), {"account_name": account["account"]}


def parse_storage_options(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw in (None, ""):
        return {}
    if not isinstance(raw, str):
        raise ValueError(f"[{SECTION}] storage_options must be a JSON object, got a {type(raw).__name__}")
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        # the raw text is not repeated: it may hold credentials
        raise ValueError(
            f"[{SECTION}] storage_options must be a JSON object, and is not valid JSON: {exc.msg}"
        ) from exc
    if not isinstance(options, dict):
        raise ValueError(f"[{SECTION}] storage_options must be a JSON object, got a {type(options).__name__}")
    return options


def _parse_threshold(raw: Any) -> int:
    try:
        threshold = int(raw or 0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[{SECTION}] threshold_bytes must be a whole number of bytes, got {raw!r}") from exc
    if threshold < 0:
        raise ValueError(f"[{SECTION}] threshold_bytes must be >= 0, got {threshold}")
    return threshold


def _check_protocol(path: str) -> None:
    """A URL scheme fsspec does not know would fail only at the first write: fail now."""
    import fsspec

    protocol = split_connection_id(path)[1].split("://", 1)[0] if "://" in path else "file"
    if protocol not in fsspec.available_protocols():
        known = ", ".join(
            p for p in ("s3", "gs", "gcs", "abfs", "abfss", "az", "file", "memory") if p in fsspec.available_protocols()
        )
        raise ValueError(
            f"[{SECTION}] path {redact_url(path)!r} has the URL scheme {protocol!r}, which fsspec does not know: "
            f"use one of {known}, or a local directory"
        )


@dataclass(frozen=True)
class StoreSettings:
    """Where and how state is stored. Checked at construction: a bad setting fails at once."""

    path: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    threshold_bytes: int = 0
    compression: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", self.path or embedded_default_path())
        _check_protocol(self.path)
        object.__setattr__(self, "storage_options", parse_storage_options(self.storage_options))
        object.__setattr__(self, "threshold_bytes", _parse_threshold(self.threshold_bytes))
        compression = (self.compression or "none").lower()
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"[{SECTION}] compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        object.__setattr__(self, "compression", compression)

    def resolve(self) -> tuple[str, dict[str, Any]]:
        """The plain fsspec URL and storage options, a connection id resolved to credentials.

        A connection id needs Airflow (its hooks hold the credentials), the way
        ``ObjectStoragePath`` resolves one; the explicit ``storage_options`` win over it.
        """
        conn_id, url = split_connection_id(self.path)
        if conn_id is None:
            url, account = _azure_account_url(url)
            return url, {**account, **self.storage_options}
        try:
            from airflow.sdk.io.fs import get_fs
        except ImportError as exc:
            raise ValueError(
                f"[{SECTION}] path {self.path!r} names the Airflow connection {conn_id!r}, which needs "
                "Airflow installed; outside Airflow give the credentials in storage_options instead"
            ) from exc
        resolved = get_fs(url.split("://", 1)[0], conn_id).storage_options
        return url, {**resolved, **self.storage_options}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StoreSettings:
        """From raw strings as a config file or the environment holds them; blanks are unset."""
        return cls(**{key: values[key] for key in KEYS if values.get(key) not in (None, "")})
