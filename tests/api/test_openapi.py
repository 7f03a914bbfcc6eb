"""Our own OpenAPI document (``/openapi.json``, docs at ``/docs``) matches the published specs.

Three directions:

- every operation of both published specs is in our document (seed paths as they are, current
  paths under ``/push/v1``; the seed's ``{pushtoken}`` is our ``{pushkey}``);
- every example the specs publish (requests in both spellings, responses) is valid under our
  documented schemas, so what the spec promises a client can send, we document as accepted;
- what the running service really answers is valid under the spec's own response schemas.

The specs are read from ``spec/`` (gematik's published files, copied unchanged) and never modified;
their relative ``$ref``s into ``definitions/*.yaml`` are inlined here, and OpenAPI 3.0's
``nullable`` is translated to JSON Schema so that ``jsonschema`` can check against the 3.0.3
(current) file too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import yaml
from jsonschema import Draft202012Validator

from conftest import Service, new_user, registration

# gematik's published specs, copied unchanged into the repository.
SPEC_ROOT = Path(__file__).resolve().parents[2] / "spec"
SPEC_FILES = {
    "current": SPEC_ROOT / "current" / "fd_openapi.yaml",
    "seed": SPEC_ROOT / "seed-2025-01" / "fd_openapi.yaml",
}
MOUNT = {"current": "/push/v1", "seed": ""}
NOT_IN_THIS_ISSUE: set[str] = set()  # every published operation is served
# Ours beyond the published files: the internal events API (not a client API), and the history
# endpoints in the seed layout too (docs/delivery.md, "History").
OUR_EXTENSIONS_PREFIXES = ("/internal/v1/", "/history/v1/")
# The seed spec documents GET channels with the channel list as a *request* body and an empty
# object as the 200 answer (a copy-paste slip); the list is what the operation really answers.
SEED_MISPLACED_RESPONSE = {("/channels/v1", "get"), ("/channels/v1/{pushtoken}", "get")}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
OPERATIONS_ROUTES = {"/health/live", "/health/ready", "/metrics"}


# --- reading the specs -------------------------------------------------------------------------


def _inline_refs(node: Any, base: Path) -> Any:
    """Replace relative ``file.yaml#/pointer`` refs by their content (refs inside resolve too)."""
    if isinstance(node, list):
        return [_inline_refs(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        file, _, pointer = ref.partition("#")
        target_path = (base / file).resolve()
        target: Any = yaml.safe_load(target_path.read_text())
        for part in filter(None, pointer.split("/")):
            target = target[part]
        return _inline_refs(target, target_path.parent)
    return {key: _inline_refs(value, base) for key, value in node.items()}


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``type: X, nullable: true`` is JSON Schema's ``type: [X, "null"]``."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


SPECS: dict[str, dict[str, Any]] = {
    name: _inline_refs(yaml.safe_load(path.read_text()), path.parent)
    for name, path in SPEC_FILES.items()
}


def spec_operations(name: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in SPECS[name]["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def our_path(spec: str, path: str) -> str:
    return MOUNT[spec] + path.replace("{pushtoken}", "{pushkey}")


def spec_validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(_nullable_to_json_schema(schema))


def spec_response_schema(spec: str, path: str, method: str, status: int) -> dict[str, Any]:
    response = SPECS[spec]["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def assert_valid_for_spec(spec: str, path: str, method: str, status: int, body: Any) -> None:
    """``body`` conforms to the spec's schema for this operation's ``status`` answer."""
    schema = spec_response_schema(spec, path, method, status)
    errors = [e.message for e in spec_validator(schema).iter_errors(body)]
    assert not errors, f"{spec} {method.upper()} {path} {status}: {errors} in {body}"


# --- our document ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(service: Service) -> dict[str, Any]:
    response = httpx.get(service.base_url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = response.json()
    return doc


def our_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema of our document; ``#/components/schemas/...`` refs resolve."""
    return Draft202012Validator({**copy.deepcopy(schema), "components": document["components"]})


def our_request_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path][method]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


def our_response_schema(
    document: dict[str, Any], path: str, method: str, status: str
) -> dict[str, Any]:
    responses = document["paths"][path][method]["responses"]
    assert status in responses, f"we do not document {status} for {method.upper()} {path}"
    schema: dict[str, Any] = responses[status]["content"]["application/json"]["schema"]
    return schema


def test_our_document_is_a_valid_openapi_document(document: dict[str, Any]) -> None:
    """Tools (and the interactive docs) can read it."""
    assert document["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(copy.deepcopy(document)).validate()


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_every_published_operation_is_served(document: dict[str, Any], spec: str) -> None:
    """Each path + method of the spec is in our document, in its layout."""
    missing = [
        f"{method.upper()} {path}"
        for path, method, _ in spec_operations(spec)
        if path not in NOT_IN_THIS_ISSUE
        and method not in document["paths"].get(our_path(spec, path), {})
    ]
    assert not missing, f"{spec} operations missing from /openapi.json: {missing}"


def test_we_document_no_client_operation_beyond_the_specs(document: dict[str, Any]) -> None:
    """Apart from health and metrics, every documented operation is one of a published spec."""
    published = {
        (our_path(spec, path), method)
        for spec in SPEC_FILES
        for path, method, _ in spec_operations(spec)
    }
    ours = {
        (path, method)
        for path, item in document["paths"].items()
        if path not in OPERATIONS_ROUTES and not path.startswith(OUR_EXTENSIONS_PREFIXES)
        for method in item
        if method in METHODS
    }
    assert ours - published == set()
    assert len(ours) == 12  # five operations of the seed layout, seven of the current one


def test_device_channel_paths_take_the_pushkey_as_parameter(document: dict[str, Any]) -> None:
    for path in ("/channels/v1/{pushkey}", "/push/v1/channels/{pushkey}"):
        for method in ("get", "post"):
            [parameter] = document["paths"][path][method]["parameters"]
            assert parameter["name"] == "pushkey"
            assert parameter["in"] == "path"
            assert parameter["schema"]["type"] == "string"


def _request_examples() -> Iterator[Any]:
    for spec in SPEC_FILES:
        for path, method, operation in spec_operations(spec):
            if path in NOT_IN_THIS_ISSUE or (path, method) in SEED_MISPLACED_RESPONSE:
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            for name, example in (body or {}).get("examples", {}).items():
                yield pytest.param(
                    spec, path, method, example["value"], id=f"{spec}-{method}-{path}-{name}"
                )


@pytest.mark.parametrize(("spec", "path", "method", "example"), list(_request_examples()))
def test_published_request_examples_are_valid_under_our_schemas(
    document: dict[str, Any], spec: str, path: str, method: str, example: Any
) -> None:
    """Registration and deletion of a pusher, channel updates in both spellings."""
    schema = our_request_schema(document, our_path(spec, path), method)
    errors = [e.message for e in our_validator(document, schema).iter_errors(example)]
    assert not errors, f"{example} is refused by our schema: {errors}"


def test_request_examples_cover_both_spellings() -> None:
    """The examples checked above include each spec's spelling of encryption and channels."""
    examples = [param.values[3] for param in _request_examples()]
    assert len(examples) == 6  # registration, deletion and channel update, in each spec
    months = {
        key for e in examples for key in e.get("encryption", {}) if "period" in key or "time" in key
    }
    assert months == {"time_iss_created", "initial_key_period"}
    members = {frozenset(c) for e in examples for c in e.get("channels", [])}
    assert members == {frozenset({"id", "status"}), frozenset({"name", "value"})}


def test_our_schemas_refuse_what_the_spec_refuses(document: dict[str, Any]) -> None:
    """Not a schema that accepts anything: a channel change without a status is refused."""
    path = "/push/v1/channels/{pushkey}"
    validator = our_validator(document, our_request_schema(document, path, "post"))
    assert validator.is_valid({"channels": [{"id": "a", "status": "enabled"}]})
    assert validator.is_valid({"channels": [{"name": "a", "value": "enabled"}]})
    assert not validator.is_valid({"channels": [{"id": "a"}]})
    assert not validator.is_valid({"channels": [{"id": "a", "status": "on"}]})
    pushers = our_validator(document, our_request_schema(document, "/pushers/v1/set", "post"))
    assert not pushers.is_valid({"app_id": "a", "pushkey": "p"})  # kind is required


def _response_examples() -> Iterator[Any]:
    for spec in SPEC_FILES:
        for path, method, operation in spec_operations(spec):
            if path in NOT_IN_THIS_ISSUE:
                continue
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json", {})
                examples = content.get("examples", {})
                if (path, method) in SEED_MISPLACED_RESPONSE and status == "200":
                    examples = operation["requestBody"]["content"]["application/json"]["examples"]
                for name, example in examples.items():
                    yield pytest.param(
                        spec,
                        path,
                        method,
                        status,
                        example["value"],
                        id=f"{spec}-{method}-{path}-{status}-{name}",
                    )


@pytest.mark.parametrize(
    ("spec", "path", "method", "status", "example"), list(_response_examples())
)
def test_published_response_examples_are_valid_under_our_schemas(
    document: dict[str, Any], spec: str, path: str, method: str, status: str, example: Any
) -> None:
    """Pusher lists, channel lists, empty answers and error bodies as the specs show them."""
    schema = our_response_schema(document, our_path(spec, path), method, status)
    errors = [e.message for e in our_validator(document, schema).iter_errors(example)]
    assert not errors, f"{example} is refused by our {status} schema: {errors}"


# --- real answers of the service against the spec's schemas ------------------------------------


@pytest.fixture(scope="module")
def device(service: Service) -> tuple[str, str]:
    """A user with one registered pusher whose pushkey needs URL-encoding."""
    user, pushkey = new_user(), "Xp/MzCt8/9DcSNE9cuiaoT5Ac55job3TdLSSmtmYl4A="
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=registration(pushkey)).status_code == 200
        body = registration(f"{pushkey}-2", profile_tag="xyz", append=True)
        assert http.post("/pushers/v1/set", json=body).status_code == 200
    return user, pushkey


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_real_answers_conform_to_the_spec(
    service: Service, device: tuple[str, str], spec: str
) -> None:
    """GET pushers, GET channels, GET/POST channels/{pushkey}, POST pushers/set answers."""
    user, pushkey = device
    key_path = "/channels/v1/{pushtoken}" if spec == "seed" else "/channels/{pushkey}"
    pushers_path = "/pushers/v1" if spec == "seed" else "/pushers"
    channels_path = "/channels/v1" if spec == "seed" else "/channels"
    set_path = pushers_path + "/set"
    device_url = our_path(spec, key_path).replace("{pushkey}", quote(pushkey, safe=""))
    update_member = ("name", "value") if spec == "seed" else ("id", "status")
    with service.client(user) as http:
        pushers = http.get(our_path(spec, pushers_path))
        assert pushers.status_code == 200
        assert len(pushers.json()["pushers"]) == 2
        assert_valid_for_spec(spec, pushers_path, "get", 200, pushers.json())

        channels = http.get(our_path(spec, channels_path))
        assert channels.status_code == 200
        assert_valid_for_spec(spec, channels_path, "get", 200, channels.json())
        # The seed's 200 schema for GET channels is a bare object; hold the list to the
        # schema it actually publishes for channel lists, too (see SEED_MISPLACED_RESPONSE).
        assert_valid_for_spec("current", "/channels", "get", 200, channels.json())

        of_device = http.get(device_url)
        assert of_device.status_code == 200
        assert_valid_for_spec(spec, key_path, "get", 200, of_device.json())
        assert_valid_for_spec("current", "/channels/{pushkey}", "get", 200, of_device.json())

        change = {update_member[0]: "erp.task.close", update_member[1]: "enabled"}
        updated = http.post(device_url, json={"channels": [change]})
        assert updated.status_code == 200
        assert_valid_for_spec(spec, key_path, "post", 200, updated.json())

        refused = http.post(device_url, json={"channels": [{update_member[0]: "erp.task.close"}]})
        assert refused.status_code == 400
        assert_valid_for_spec(spec, key_path, "post", 400, refused.json())

        missing = http.post(our_path(spec, set_path), json={"kind": "http"})
        assert missing.status_code == 400
        assert missing.json()["errcode"] == "M_MISSING_PARAM"
        assert_valid_for_spec(spec, set_path, "post", 400, missing.json())

        deleted = http.post(
            our_path(spec, set_path),
            json={"kind": None, "app_id": "de.gematik.test.apns", "pushkey": "never-registered"},
        )
        assert deleted.status_code == 200
        assert_valid_for_spec(spec, set_path, "post", 200, deleted.json())


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_error_bodies_conform_to_the_spec_error_schema(service: Service, spec: str) -> None:
    """404 and 401 are not listed by the spec, but they use its error schema all the same."""
    error_schema = spec_response_schema(
        spec, "/pushers/v1" if spec == "seed" else "/pushers", "get", 400
    )
    unknown = our_path(
        spec, "/channels/v1/{pushtoken}" if spec == "seed" else "/channels/{pushkey}"
    )
    with service.client(new_user()) as http:
        not_found = http.get(unknown.replace("{pushkey}", "no-such-device"))
        no_token = httpx.get(
            service.base_url + our_path(spec, "/pushers/v1" if spec == "seed" else "/pushers")
        )
    assert not_found.status_code == 404
    assert no_token.status_code == 401
    for body in (not_found.json(), no_token.json()):
        errors = [e.message for e in spec_validator(error_schema).iter_errors(body)]
        assert not errors, f"{body}: {errors}"
        assert set(body) == {"errcode", "error"}


@pytest.fixture(scope="module")
def rate_limited(start_service: Any) -> Service:
    return start_service(FDPUSH_RATE_LIMIT="1/60")


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_rate_limited_answer_conforms_to_the_spec(rate_limited: Service, spec: str) -> None:
    """429 carries the spec's rate_limited body: errcode, error and retry_after_ms."""
    set_path = "/pushers/v1/set" if spec == "seed" else "/pushers/set"
    with rate_limited.client(new_user()) as http:
        answers = [http.post(our_path(spec, set_path), json={"kind": "http"}) for _ in range(3)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    body = limited[0].json()
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    assert isinstance(body["retry_after_ms"], int)
    assert_valid_for_spec(spec, set_path, "post", 429, body)


# --- interactive docs ----------------------------------------------------------------------------


def test_interactive_docs_are_served(service: Service) -> None:
    response = httpx.get(service.base_url + "/docs", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert "/openapi.json" in response.text


PUBLISHED = Path(__file__).resolve().parents[2].parent / "shared" / "spec"


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="the published specs are not at hand")
def test_our_copy_of_the_specs_is_the_published_text() -> None:
    """``spec/`` is gematik's files, byte for byte: the tests check against the real contract."""
    ours = sorted(p.relative_to(SPEC_ROOT) for p in SPEC_ROOT.rglob("*") if p.is_file())
    published = sorted(p.relative_to(PUBLISHED) for p in PUBLISHED.rglob("*") if p.is_file())
    assert ours == published
    for relative in ours:
        assert (SPEC_ROOT / relative).read_bytes() == (PUBLISHED / relative).read_bytes()
