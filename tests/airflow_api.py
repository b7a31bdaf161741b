"""A real ``airflow api-server`` on a free loopback port, for the plugin's tests and benchmark.

SimpleAuthManager with two users: ``admin`` (role Admin) and ``viewer`` (role Viewer), their
passwords in a file; tokens come from ``POST /auth/token`` like any API client's. The server
loads the plugin from the installed package's ``airflow.plugins`` entry point.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.airflow_home import AIRFLOW
from tests.servers import free_port

PASSWORDS = {"admin": "admin-pw", "viewer": "viewer-pw"}


def auth_settings(home: Path) -> dict[str, str]:
    """airflow.cfg settings (as env vars) for SimpleAuthManager with :data:`PASSWORDS`."""
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "objstore-backend-tests-jwt-secret-0123456789",
        "AIRFLOW__API__SECRET_KEY": "objstore-backend-tests-secret-key",
    }


class ApiServer:
    """``airflow api-server`` in a subprocess (one worker), its log in ``home/api-server.log``."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "api-server.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env,
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
