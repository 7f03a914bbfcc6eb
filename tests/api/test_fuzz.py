"""Property/fuzz test of the running service against the PUBLISHED OpenAPI files (schemathesis).

Every operation of both published layouts gets requests generated from the spec's own schemas,
valid ones and deliberately broken ones (wrong types, missing members, odd path values), and every
answer must pass two checks:

- ``not_a_server_error``: no input ever produces a 5xx;
- ``response_schema_conformance``: a response with a status the spec documents matches the
  spec's schema for it. Status-code conformance is deliberately not checked: the spec lists only
  200/400/429, while fdpush also answers 401, 404 and 413 (docs/decisions.md).

The specs are loaded straight from ``spec/`` (gematik's published files, copied unchanged; their
relative ``$ref``s into ``definitions/*.yaml`` resolve against the file), never edited. Known quirks
of the published files that schemathesis copes with as they are:

- the seed spec's ``GET /channels/v1`` and ``GET /channels/v1/{pushtoken}`` declare a request
  body (a copy of the response schema), so GETs are sent with a JSON body, which the service must
  ignore;
- the seed spec names the path parameter ``pushtoken``, the current one ``pushkey``;
- the current spec lists ``/history/...`` operations; the fuzzed service keeps no history
  (``FDPUSH_HISTORY_DAYS`` is 0), so they must answer a clean 404, never a 5xx.

Each operation also sees a pushkey the fuzz user has actually registered (with ``/``, ``+`` and
``=`` in it, so it travels URL-encoded), so the device-channel operations reach their "found"
branch, not only the 404 one. A last property test goes deeper than the spec's plain strings
into the ``encryption`` fields (months and secrets in any Unicode, e.g. non-ASCII digits).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from conftest import CHANNELS, Service, dev_token, new_user, registration

# gematik's published specs, copied unchanged into the repository.
SPEC_ROOT = Path(__file__).resolve().parents[2] / "spec"
SPECS = {
    # name: (file, where its paths are mounted on the service)
    "current": (SPEC_ROOT / "current" / "fd_openapi.yaml", "/push/v1"),
    "seed": (SPEC_ROOT / "seed-2025-01" / "fd_openapi.yaml", ""),
}
MAX_EXAMPLES = 60
# An operation with a path parameter or a body must have been called at least this often, or
# the test did not really exercise it. (A GET without parameters has one request to send.)
MIN_CALLS_WITH_INPUT = 40
CHECKS = [not_a_server_error, response_schema_conformance]
CATALOG = [entry.split("=")[0] for entry in CHANNELS.split(",")]
# How a channel change is spelled in each spec's channels_post.yaml.
CHANNEL_MEMBERS = {"current": ("id", "status"), "seed": ("name", "value")}


def _load(name: str) -> Any:
    return schemathesis.openapi.from_path(SPECS[name][0])


def _operations() -> list[Any]:
    params = []
    for name in SPECS:
        for result in _load(name).get_all_operations():
            operation = result.ok()
            params.append(pytest.param(name, operation.label, id=f"{name}:{operation.label}"))
    return params


def _path_parameter(operation: Any) -> str | None:
    names = [p.name for p in operation.path_parameters]
    return names[0] if names else None


@pytest.mark.parametrize(("spec", "label"), _operations())
def test_operation_survives_fuzzing(service: Service, spec: str, label: str) -> None:
    """No generated request, valid or not, gets a 5xx or a body that contradicts the spec."""
    operation = _load(spec).find_operation_by_label(label)
    base_url = service.base_url + SPECS[spec][1]
    user = new_user()
    # A real device of the fuzz user, so that channels/{pushkey} also hits an existing pushkey.
    pushkey = f"fuzz/{uuid.uuid4().hex}+key="
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
    headers = {"Authorization": f"Bearer {dev_token(user)}"}

    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    parameter = _path_parameter(operation)
    if parameter is not None:
        known = {parameter: pushkey}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
        if operation.body:
            # Changes to catalog channels of the registered device: the "accepted" branch.
            id_member, status_member = CHANNEL_MEMBERS[spec]
            change = st.fixed_dictionaries(
                {
                    id_member: st.sampled_from(CATALOG),
                    status_member: st.sampled_from(["enabled", "disabled", "not_set"]),
                }
            )
            strategies.append(
                st.lists(change, max_size=4).flatmap(
                    lambda changes: operation.as_strategy(
                        GenerationMode.POSITIVE, path_parameters=known, body={"channels": changes}
                    )
                )
            )

    statuses: list[int] = []
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=CHECKS, timeout=30
        )
        statuses.append(response.status_code)

    with session:
        fuzz()

    has_input = parameter is not None or bool(operation.body)
    minimum = MIN_CALLS_WITH_INPUT if has_input else 1
    assert len(statuses) >= minimum, f"only {len(statuses)} requests were made"
    assert all(status < 500 for status in statuses)
    if parameter is not None and "/channels" in label:
        # The registered pushkey was among the examples and was found, URL-encoded as it is.
        assert 200 in statuses, f"the registered pushkey never answered 200: {set(statuses)}"


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    month=st.text(st.characters(codec="utf-8"), max_size=10)
    | st.from_regex(r"\d{4}-\d{2}", fullmatch=True),
    iss=st.text(st.characters(codec="utf-8"), max_size=70)
    | st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True),
)
@example(month="\u0662\u0660\u0662\u0665-10", iss="ab" * 32)  # Arabic-Indic digits
@example(month="2025-10", iss="\u0661" * 64)
def test_encryption_fields_never_cause_a_server_error(
    service: Service, month: str, iss: str
) -> None:
    """Deeper than the spec's plain strings: odd months and secrets are 400, never a 5xx."""
    body = registration()
    body["encryption"] = {**body["encryption"], "time_iss_created": month, "iss": iss}
    with service.client(new_user()) as http:
        response = http.post("/push/v1/pushers/set", json=body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["errcode"] == "M_INVALID_PARAM"
