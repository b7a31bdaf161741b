"""Which object a stored reference may lead to: only the object of the key it is stored under.

In offload mode Airflow's DB row holds ``{"__airflow_state_ref__": "objstore:<path>"}``, and
that row can be written by anyone who may edit the key (Airflow's own REST API stores it
verbatim). Following ``<path>`` blindly would let a user who may edit one DAG's state read,
copy (``import``) or delete (the plugin's DELETE) another DAG's or asset's object. So every
reader checks the path against the (scope, key) the row belongs to, with
:func:`reference_refusal`, before it reads or deletes anything; a refused reference is a
plain problem to report, never followed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from objstore_backend.layout import ScopeKind, object_path, parse

__all__ = ["reference_refusal"]


def reference_refusal(
    path: str,
    scope: Any,
    key: str,
    *,
    asset_name: str | None = None,
    asset_uri: str | None = None,
    origin: str | None = None,
) -> str | None:
    """``None`` if a reference to ``path`` may be followed for ``key`` of ``scope``, else why not.

    What each (scope, key) may name:

    * a task key: exactly its own object, ``object_path(scope, key)``;
    * an asset key by id (the server's rows): its own ``asset/id/<id>/<key>`` (the copy the server
      adopts when both modes are set) or the object the worker writes for that asset,
      ``asset/name/<asset_name>/<key>`` or ``asset/uri/<asset_uri>/<key>``;
    * an asset key by name or uri (the worker): its own object, or an adopted ``asset/id/.../<key>``
      copy whose recorded ``origin`` (read from the copy's metadata) is that own object. A worker
      cannot tell which id its asset has; the origin says whose object was copied.
    """
    own = object_path(scope, key)
    allowed = {own}
    for kind, asset in (("name", asset_name), ("uri", asset_uri)):
        if asset is not None:
            allowed.add(object_path(SimpleNamespace(**{kind: asset}), key))
    if path in allowed:
        return None
    location = parse(path)
    adopted_copy = location is not None and location.kind is ScopeKind.ASSET_ID and location.key == key
    if adopted_copy and origin in allowed:
        return None
    return (
        f"the reference names {path}, which is not the object of this key ({own}): refused, "
        "a reference may only lead to its own key's object"
    )
