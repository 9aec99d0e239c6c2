"""Calling the admin API, for the CLI, the benchmarks and the tests: one place that speaks its rules."""

from __future__ import annotations

from typing import Any

import httpx


def admin_call(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout_s: float = 120.0,
) -> httpx.Response:
    """One request to the admin API. A request that changes state always carries a JSON body (`{}`
    when there is nothing to send): the API refuses any other, which is what stops cross-site posts."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method.upper() != "GET" and body is None:
        body = {}
    return httpx.request(method, base_url + path, headers=headers, json=body, timeout=timeout_s)
