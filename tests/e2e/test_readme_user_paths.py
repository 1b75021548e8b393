"""What a new user copies from README.md, run as written through the real stack (session 20): each test names the
README line it checks and asserts the exact status, headers and bytes the README promises."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.harness import RunningStack, stack_holding


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic: dict[str, Any]) -> Iterator[RunningStack]:
    """One local-folder stack holding the synthetic CT (these paths do not depend on the storage backend)."""
    with stack_holding(tmp_path_factory.mktemp("readme-user-file"), "file", None, list(synthetic["ct"])) as running:
        yield running


# -- README, HTTP API: "GET /api/v1/admin/audit?...: pages of `limit` (1-1000, default 100) ... A malformed UID,
# cursor or an unknown parameter is a JSON 400"; the deletion audit is "paged the same way". A limit over 1000 was
# cut to 1000 in silence (a 200) up to 2**31 - 1, and above that a 400 naming 2147483647 as the bound.


@pytest.mark.parametrize("kind", ["", "kind=deletion&"])
@pytest.mark.parametrize("limit", ["1001", "5000", "2147483647"])
def test_audit_limit_over_1000_is_a_json_400_naming_the_bound(stack: RunningStack, kind: str, limit: str) -> None:
    answer = requests.get(
        f"{stack.url}/api/v1/admin/audit?{kind}limit={limit}", headers=stack.api_headers, timeout=30
    )
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"error": "bad_request", "detail": "limit: expected an integer from 1 to 1000"}'


@pytest.mark.parametrize("kind", ["", "kind=deletion&"])
def test_audit_limit_1000_is_a_page(stack: RunningStack, kind: str) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/audit?{kind}limit=1000", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
