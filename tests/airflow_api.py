"""A real ``airflow api-server`` on a free loopback port, for the plugin's tests and benchmark.

SimpleAuthManager's users, through :class:`tests.per_dag_auth.PerDagAuthManager` (a subclass
that can limit a user to some DAGs): ``admin`` (role Admin), ``viewer`` (role Viewer, every DAG)
and ``dag_a_editor`` (role User, DAG ``dag_a`` only), their passwords in a file; tokens come from
``POST /auth/token`` like any API client's. The server loads the plugin from the installed
package's ``airflow.plugins`` entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests import per_dag_auth
from tests.airflow_home import AIRFLOW, REPO
from tests.servers import free_port

#: user -> (SimpleAuthManager role, password)
USERS = {"admin": ("admin", "admin-pw"), "viewer": ("viewer", "viewer-pw"), "dag_a_editor": ("user", "dag-a-pw")}
PASSWORDS = {user: password for user, (_, password) in USERS.items()}
#: The users limited to some DAGs, and those DAGs (any other user: every DAG its role allows).
DAG_GRANTS = {"dag_a_editor": ["dag_a"]}


def auth_settings(home: Path) -> dict[str, str]:
    """airflow.cfg settings (as env vars) for :data:`USERS` and :data:`DAG_GRANTS`."""
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": per_dag_auth.CLASS_PATH,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        **per_dag_auth.grants_setting(DAG_GRANTS),
        "AIRFLOW__API_AUTH__JWT_SECRET": "objstore-backend-tests-jwt-secret-0123456789",
        "AIRFLOW__API__SECRET_KEY": "objstore-backend-tests-secret-key",
    }


class ApiServer:
    """``airflow api-server`` in a subprocess (one worker), its log in ``home/<log_name>``."""

    def __init__(self, home: Path, env: dict[str, str], log_name: str = "api-server.log") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / log_name
        self._log = self.log_path.open("wb")
        # the auth manager lives in this repository's tests package
        path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env={**env, "PYTHONPATH": path},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self._tokens: dict[str, str] = {}

    def wait_ready(self, timeout: float = 120) -> ApiServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"api-server exited {self.process.returncode}: {self.log_tail()}")
            try:
                if self.client.get("/api/v2/monitor/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"api-server not ready in {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def token(self, user: str) -> str:
        if user not in self._tokens:
            answer = self.client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
            assert answer.status_code == 201, answer.text
            self._tokens[user] = answer.json()["access_token"]
        return self._tokens[user]

    def call(
        self,
        method: str,
        path: str,
        user: str | None = None,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request, authenticated as ``user`` with a Bearer token (``None``: anonymous)."""
        headers = dict(headers or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        return self.client.request(method, path, json=json, headers=headers)
