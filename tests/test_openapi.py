"""The OpenAPI document: generated from the code, complete, and true to what the server answers
(schemathesis fuzzes the live server against it)."""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from models import Settings
from tests.support import ARTIFACTS, TEST_SECRET, token
from web import create_app
from web.openapi import build_document
from web.spec import Operation

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# The same cases every run, so CI is repeatable; FUZZ_RANDOM=1 explores new ones (do it locally).
FUZZ_DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"


@pytest.fixture(scope="module")
def app(stack_env):
    return create_app(settings=Settings.from_env(stack_env))


def test_the_document_lists_every_route_the_app_serves(app, stack) -> None:
    served = requests.get(stack.url + "/api/v1/openapi.json", timeout=10).json()
    assert served["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, methods in served["paths"].items() for method in methods}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        routes |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
        assert isinstance(getattr(app.view_functions[rule.endpoint], "openapi", None), Operation), rule.endpoint
    assert routes == documented
    assert served == build_document(app)


def test_the_docs_page_is_served(stack) -> None:
    response = requests.get(stack.url + "/api/v1/docs", timeout=10)
    assert response.status_code == 200 and "openapi.json" in response.text



def test_fuzz_no_5xx_and_every_answer_conforms(stack) -> None:
    """schemathesis generates requests for every operation from the document and checks each answer:
    no 5xx, the documented schema, the documented content type. Bounded: FUZZ_EXAMPLES per
    operation (25, a few hundred cases in all)."""
    schema = schemathesis.openapi.from_url(stack.url + "/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token('fuzzer', secret=TEST_SECRET)}"}
    counted: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/events") or operation.path == "/dev/token":
            continue  # an event stream never ends by design; /dev/token has tests of its own

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_DERANDOMIZE,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=stack.url, headers=headers, timeout=40)
            counted[case.operation.label] = counted.get(case.operation.label, 0) + 1
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance,
                                                     content_type_conformance])

        check()
    total = sum(counted.values())
    line = f"schemathesis: {total} cases over {len(counted)} operations, no 5xx, every answer conforms"
    print(line)
    with (ARTIFACTS / "fault-figures.txt").open("a") as figures:  # shown at the end of the run
        figures.write(line + "\n")
    assert len(counted) >= 14 and total >= 200
