"""A bounded schemathesis run against the server's OpenAPI spec: no request gets a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.serve.conftest import TOKEN

EXAMPLES = 6  # per operation and generation mode: a smoke fuzz, a few seconds in all


def test_fuzzed_requests_never_get_a_server_error(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/tasks", "/tasks/{name}", "/health", "/metrics"}
    statuses = set()
    for operation in operations:
        has_inputs = bool(list(operation.iter_parameters()) or operation.get_request_payload_content_types())
        for mode in GenerationMode if has_inputs else [GenerationMode.POSITIVE]:

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def no_server_error(case) -> None:
                response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"})
                statuses.add(response.status_code)
                assert response.status_code < 500, f"{case.as_curl_command()} -> {response.status_code} {response.text}"

            no_server_error()
    assert any(400 <= status < 500 for status in statuses) and 200 in statuses
