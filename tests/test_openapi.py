"""GET /openapi.json: a valid OpenAPI document that covers every route, and a server that keeps it.

The conformance test fuzzes the running server with schemathesis (its pytest integration,
4.x API): no 5xx, and every status, content type, header and body is the documented one.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import checks

import handlers
from tests.conftest import RunningServer

# Positive and negative data alike; `filename` values mostly land on 403/404, which is fine.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
MAX_EXAMPLES = 30  # per operation and phase: the whole run stays well under two minutes


@pytest.fixture(scope="module")
def spec(ocr_server: RunningServer) -> dict[str, Any]:
    response = requests.get(f"{ocr_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200, "GET /openapi.json failed (routes not wired?)"
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_spec_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    post = spec["paths"]["/ocr_service"]["post"]
    assert set(post["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json",
    }
    documented = {int(status) for status in post["responses"]}
    assert documented >= {200, 202, 400, 403, 404, 413, 415, 422, 500, 503, 504}
    for status in documented - {200, 202}:
        schema = post["responses"][str(status)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    assert post["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    # A server-side path may come in any encoding, multipart too: no `file` required there.
    multipart = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "required" not in multipart and "filename" in multipart["properties"]
    # Codes only a task poll gives are not promised for POST, and the poll documents them.
    assert "store_unavailable" not in post["responses"]["503"]["description"]
    poll = spec["paths"]["/ocr_service/tasks/{task_id}"]["get"]["responses"]
    assert "store_unavailable" in poll["503"]["description"] and "304" in poll


def test_every_route_is_documented(spec: dict[str, Any]) -> None:
    # Handlers name their route in OpenAPI form (`endpoint`, also the metrics label).
    # The table is only built here, never served, so no context is needed.
    table = handlers.routes(cast(Any, None), cast(Any, None))
    routed = {getattr(handler, "endpoint", pattern) for pattern, handler, *_ in table}
    assert routed == set(spec["paths"]), "routes and /openapi.json disagree"


@pytest.fixture
def api_schema(ocr_server: RunningServer) -> Any:
    return schemathesis.openapi.from_url(f"{ocr_server.url}/openapi.json")


@pytest.fixture(scope="module")
def log_mark(ocr_server: RunningServer) -> int:
    """Where the server log stood before the fuzzing."""
    return len(ocr_server.log_text())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_conforms_to_its_spec(case: schemathesis.Case, log_mark: int) -> None:
    case.call_and_validate(checks=CHECKS, timeout=60)


def test_fuzzing_left_no_traceback_in_the_log(ocr_server: RunningServer, log_mark: int) -> None:
    # A handler can fail after its response is sent (e.g. on connection close): the
    # client sees nothing wrong, only the server log shows it. Runs after the fuzzing.
    log = ocr_server.log_text()[log_mark:]
    if "Traceback" in log:
        start = log.index("Traceback")
        pytest.fail("the server logged an uncaught exception:\n" + log[max(0, start - 400) : start + 2500])
