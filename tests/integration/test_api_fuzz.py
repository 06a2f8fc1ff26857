"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis), against the service
as a real process and a real Orthanc: whatever the input, never a 5xx other than the documented 503/504
of an unavailable dependency, and never a bare 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.orthanc import OrthancEndpoint
from tests.service import running_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(
    orthanc: OrthancEndpoint, random_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    work = tmp_path_factory.mktemp("fuzz")
    env = {
        **orthanc.env(),
        "TUMORSEG_MODEL_PATH": str(random_model),
        "TUMORSEG_RESULTS_DIR": str(work / "results"),
        "TUMORSEG_DEVICE": "cpu",
    }
    with running_service(env, work / "service.log", work) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            assert response.status_code != 500, f"{case.method} {case.formatted_path}: {response.text}"
            if response.status_code >= 400:
                assert set(response.json()) == {"detail", "code"}, response.text
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    assert "POST /segment/{patient_id}" in labels and "GET /results/{result_id}" in labels
