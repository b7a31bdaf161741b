"""The Airflow provider registration: what ``airflow providers list`` and ``airflow config list`` show.

Airflow finds :func:`get_provider_info` through the ``apache_airflow_provider`` entry point
(pyproject.toml) and validates it against its ``provider_info.schema.json``. The ``config``
part declares the ``[objstore_backend]`` section, so its keys appear, with their descriptions
and defaults, in ``airflow config list --section objstore_backend`` and the generated airflow.cfg.

Defaults are the strings airflow.cfg would hold and must mean what
:class:`~objstore_backend.config.StoreSettings` does when the key is unset (a blank value is
unset). Airflow runs each default through ``str.format``: a default with braces, such as
``{}``, would break config loading, so the empty ``storage_options`` is ``""``, not ``{}``.
This module imports nothing from Airflow.
"""

from __future__ import annotations

from typing import Any

from objstore_backend.codec import COMPRESSIONS
from objstore_backend.config import SECTION

__all__ = ["get_provider_info"]

PACKAGE_NAME = "objstore-backend"
#: The release that added the section and its keys.
_ADDED = "0.1.0"


def _config_options() -> dict[str, dict[str, Any]]:
    return {
        "path": {
            "description": (
                "Base URL of the state store: s3://bucket/prefix/, gs://bucket/prefix/, a local directory, "
                "or any fsspec URL. An Airflow connection id in the user part (s3://aws_default@bucket/prefix/) "
                "supplies the credentials. Empty: the directory state_store under AIRFLOW_HOME (the embedded "
                "default).\n"
            ),
            "version_added": _ADDED,
            "type": "string",
            "example": "s3://aws_default@my-bucket/airflow/state/",
            "default": "",
        },
        "storage_options": {
            "description": (
                "JSON object of options passed to the fsspec filesystem, e.g. an endpoint_url for an "
                "S3-compatible server; they win over the connection's options. Empty means no options. "
                "Marked sensitive, as it may hold credentials: Airflow masks it as it masks secrets and can "
                "also read it from AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS_CMD or _SECRET.\n"
            ),
            "version_added": _ADDED,
            "type": "string",
            "example": '{"endpoint_url": "http://minio:9000"}',
            "default": "",
            "sensitive": True,
        },
        "threshold_bytes": {
            "description": (
                "Offload mode only: values whose JSON is smaller than this many bytes stay inline in the "
                "reference Airflow keeps in its metadata DB and cost no request. 0 always offloads. Must be "
                "a whole number >= 0.\n"
            ),
            "version_added": _ADDED,
            "type": "integer",
            "example": "4096",
            "default": "0",
        },
        "compression": {
            "description": (
                f"Compression of the objects written: one of {', '.join(COMPRESSIONS)}. Readers recognise "
                "every one of them from the body whatever is set, so changing it strands no key.\n"
            ),
            "version_added": _ADDED,
            "type": "string",
            "example": "gzip",
            "default": "none",
        },
    }


def get_provider_info() -> dict[str, Any]:
    """The provider's description, in the shape of Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Object storage state store",
        "description": (
            "Task and asset state store for Apache Airflow 3.3 in object storage (S3, GCS, any fsspec "
            "filesystem), with expiry, a GC job and a bucket audit\n"
        ),
        "config": {
            SECTION: {
                "description": "Where and how objstore_backend.ObjectStoreBackend stores task and asset state.\n",
                "options": _config_options(),
            }
        },
    }
