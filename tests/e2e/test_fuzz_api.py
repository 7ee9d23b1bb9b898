"""Schemathesis against Spool's own OpenAPI document, over real HTTP with a valid key:
whatever the bytes, no 5xx answer, no crashed process, no unhandled exception in a log."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from shared.settings import load_settings
from tests.conftest import Tenancy

pytestmark = pytest.mark.e2e

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())
KEY: dict[str, str] = {}


@pytest.fixture
def fuzz_key(tenancy: Tenancy) -> str:
    if "secret" not in KEY:
        KEY["secret"] = tenancy.new_key("fuzz")[1]
    return KEY["secret"]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_no_server_errors(case: schemathesis.Case, tenancy: Tenancy, fuzz_key: str) -> None:
    response = case.call(
        base_url=tenancy.url, headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=30
    )
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:500]}"


def test_every_process_survived_the_fuzzing(tenancy: Tenancy) -> None:
    for proc in [*tenancy.apis, tenancy.worker]:
        assert proc.process.poll() is None, f"{proc.role} died:\n{proc.log()[-2000:]}"
        log = proc.log()
        assert "Traceback" not in log, f"{proc.role} logged an unhandled exception:\n{log[-3000:]}"
