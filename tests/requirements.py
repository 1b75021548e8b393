"""What a test needs from the machine. Run alone, a missing part is a skip that names it; under `make test`
(``DICOMGW_TEST_REQUIRE_ALL=1``) it is a failure, so a missing install step can never pass as green."""

from __future__ import annotations

import os

import pytest


def require(present: bool, reason: str, *, module: bool = False) -> None:
    """Skip (or, under `make test`, fail) with ``reason`` unless ``present``."""
    if present:
        return
    if os.environ.get("DICOMGW_TEST_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (make test requires it)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)
