"""The operator API against its own contract: schemathesis generates requests from
/api/v1/openapi.json (valid ones and invalid ones) and checks every answer: never a 5xx, a
status the document lists, the content type it says, a body that matches its schema."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

#: test cases per operation: enough to reach every kind of answer, few enough for a fast suite
EXAMPLES = int(os.environ.get("BUILDMASTER_TEST_SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "ignored_auth",
    ]
)


def _schemathesis() -> str:
    beside = Path(sys.executable).parent / "st"
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis (st) is not installed: pip install -e '.[test]'")
    return found


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_api_keeps_its_contract(api_world: Any, tmp_path: Path) -> None:
    world = api_world.world
    # something to find: builds in every list, a builder, a private archive
    await world.builder("t1")
    for i in range(3):
        await world.queue(f"contract{i}", ppa=i == 0)
    await api_world.admin.post(
        "/api/v1/archives", {"owner": "hidden", "distribution": "ubuntu", "private": True}
    )
    base = api_world.harness.base_url
    args = [
        "run",
        f"{base}/api/v1/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "21",
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--header",
        f"Authorization: Bearer {api_world.admin.token}",
        "--exclude-path-regex",
        "/log/stream$",
        # revoking its own token would leave the rest of the run without one
        "--exclude-path",
        "/api/v1/tokens/{id}",
        "--request-timeout",
        "20",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    out, err, code = await getProcessOutputAndValue(
        _schemathesis(), args, env={**os.environ, "NO_COLOR": "1"}, path=str(tmp_path)
    )
    report = (out + err).decode("utf-8", "replace")
    assert code == 0, report[-20000:]
