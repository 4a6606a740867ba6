"""Property-based: random requests built from the OpenAPI document never get a 500,
and every status they get is one the document declares for the operation
(issue 17 item 14: 39 operations answered 404, 400 or 409 undeclared).

Every operation is exercised as admin, deterministically (derandomized) and
bounded (a few examples each). Left out: building bundles (slow), starting
feed evaluations (each a separate process generating up to a million contacts,
which would outlive the test) and revoking tokens (it could revoke the admin
token the run uses). Driven by hand rather
than with schemathesis' pytest plugin, which does not run under pytest 9 yet.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.web.conftest import Api

EXCLUDED = {
    ("POST", "/api/v1/deploy"),
    ("POST", "/api/v1/feed/evaluations"),
    ("DELETE", "/api/v1/tokens/{token_id}"),
}
EXAMPLES = 12


def test_no_server_errors(api: Api) -> None:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", api.app)
    headers = api.headers("admin")
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        tested += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            if isinstance(case.query, dict):
                case.query.pop("wait", None)  # no dispatcher runs here: it would time out
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert tested >= 30
    assert not failures, "\n\n".join(failures)
