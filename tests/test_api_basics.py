"""The operator API over HTTP: its index and contract, errors as problem documents,
tokens and who may do what."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from api_support import Answer


def assert_problem(answer: Answer, status: int, kind: str, *words: str) -> None:
    """The answer is a problem document of this kind whose detail says ``words``."""
    assert answer.status == status, answer.body
    assert answer.is_problem, answer.headers
    problem = answer.json
    assert problem["type"] == f"urn:buildmaster:problem:{kind}"
    assert problem["status"] == status
    assert problem["title"] and problem["instance"].startswith("/")
    for word in words:
        assert word in problem["detail"], problem["detail"]


@pytest_twisted.ensureDeferred
async def test_the_index_and_the_openapi_document(api_world: Any) -> None:
    index = await api_world.anonymous.get("/api/v1")
    assert index.status == 200
    assert index.json["openapi"] == "/api/v1/openapi.json"
    assert "/api/v1/builds" in index.json["links"].values()
    document = (await api_world.anonymous.get("/api/v1/openapi.json")).json
    assert document["openapi"].startswith("3.1")
    assert "/api/v1/builds/{id}" in document["paths"]
    assert "BuildDetail" in document["components"]["schemas"]


@pytest_twisted.ensureDeferred
async def test_errors_are_problem_documents_a_person_can_act_on(api_world: Any) -> None:
    anonymous, admin = api_world.anonymous, api_world.admin
    assert_problem(await anonymous.get("/api/v1/no/such/thing"), 404, "not-found", "openapi.json")
    assert_problem(await anonymous.get("/api/v1/builds/424242"), 404, "not-found", "424242")
    # digits of other scripts are no id ("³" is a digit to Python, not to int())
    for path in ("/api/v1/builds/%C2%B3", "/api/v1/builds/%D9%A3/log", "/api/v1/tokens/%C2%B3"):
        assert_problem(await admin.get(path), 404, "not-found")
    assert_problem(await admin.post("/api/v1/builds/%C2%B3/retry"), 404, "not-found")
    wrong = await anonymous.call("PUT", "/api/v1/builds")
    assert_problem(wrong, 405, "method-not-allowed", "GET")
    assert wrong.header("allow") == "GET"
    assert_problem(await anonymous.get("/api/v1/builds?limit=0"), 400, "invalid-parameter", "limit")
    assert_problem(
        await anonymous.get("/api/v1/builds?state=baked"), 400, "invalid-parameter", "fullybuilt"
    )
    # writing needs a token, and says how to send one
    refused = await anonymous.post("/api/v1/builders", {"name": "x"})
    assert_problem(refused, 401, "unauthenticated", "Authorization: Bearer")
    assert refused.header("www-authenticate") == 'Bearer realm="buildmaster"'
    bogus = anonymous.with_token("bm_not-a-token")
    assert_problem(await bogus.get("/api/v1/builds"), 401, "unauthenticated", "unknown or revoked")
    # bodies: not JSON, not the schema, too large
    form = await admin.call(
        "POST",
        "/api/v1/builders",
        body=b"name=bob",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(form, 415, "unsupported-media-type", "Content-Type: application/json")
    broken = await admin.call(
        "POST", "/api/v1/builders", body=b"{", headers={"Content-Type": "application/json"}
    )
    assert_problem(broken, 400, "bad-request", "not valid JSON")
    invalid = await admin.post("/api/v1/builders", {"name": "Bob", "processors": []})
    assert_problem(invalid, 400, "invalid-body", "BuilderCreate")
    assert any("url" in e for e in invalid.json["errors"])
    assert any("processors" in e for e in invalid.json["errors"])
    huge = await admin.post("/api/v1/builders", {"name": "x" * 70_000})
    assert_problem(huge, 413, "body-too-large", "65536")
    anonymous_huge = await anonymous.post("/api/v1/builders", {"name": "x" * 70_000})
    assert anonymous_huge.status == 401  # nothing was kept of it


@pytest_twisted.ensureDeferred
async def test_tokens_are_made_listed_and_revoked(api_world: Any) -> None:
    admin = api_world.admin
    made = await admin.post(
        "/api/v1/tokens",
        {"scope": "uploader", "archives": ["~cprov/ubuntu/ppa"], "description": "cprov's dput"},
    )
    assert made.status == 201, made.body
    secret = made.json["secret"]
    assert secret.startswith("bm_") and made.json["archives"] == ["~cprov/ubuntu/ppa"]
    assert made.header("location") == f"/api/v1/tokens/{made.json['id']}"
    # stored hashed: the secret is nowhere in the database
    rows = await api_world.store.db.query("SELECT token_hash, prefix FROM api_token")
    assert all(secret not in (h, p) for h, p in rows)
    uploader = api_world.anonymous.with_token(secret)
    current = await uploader.get("/api/v1/tokens/current")
    assert current.json["scope"] == "uploader" and current.json["description"] == "cprov's dput"
    listed = await admin.get("/api/v1/tokens")
    assert [t["scope"] for t in listed.json["tokens"]] == ["admin", "uploader"]
    assert "secret" not in listed.json["tokens"][1]
    # an uploader token may not make tokens, nor list them, nor revoke others
    assert_problem(
        await uploader.post("/api/v1/tokens", {"scope": "admin"}), 403, "forbidden", "admin token"
    )
    assert_problem(await uploader.get("/api/v1/tokens"), 403, "forbidden")
    assert_problem(await uploader.delete("/api/v1/tokens/1"), 403, "forbidden", "itself")
    mixed = await admin.post("/api/v1/tokens", {"scope": "admin", "archives": ["ubuntu"]})
    assert_problem(mixed, 422, "unprocessable", "admin token names no archive")
    unknown = await admin.post(
        "/api/v1/tokens", {"scope": "uploader", "archives": ["~nobody/ubuntu/ppa"]}
    )
    assert_problem(unknown, 422, "unprocessable", "~nobody/ubuntu/ppa")
    # revoked: refused at once
    assert (await admin.delete(f"/api/v1/tokens/{made.json['id']}")).status == 204
    assert_problem(await uploader.get("/api/v1/tokens/current"), 401, "unauthenticated", "revoked")
    everything = await admin.get("/api/v1/tokens?include_revoked=true")
    assert everything.json["tokens"][1]["revoked"] is not None
