"""Every text a client sends that could end in Postgres — each string field of each request body
and each string query parameter the OpenAPI document names — answers 422 naming the field when it
carries a NUL (which Postgres text cannot hold), never a 500, and stores nothing. Walked from the
document, so a field added later is covered without a test of its own."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from models import Conversation, Message, WebhookEndpoint
from tests.support import token

# A value each field accepts, so that the NUL is the only thing wrong with the body.
VALID = {"url": "https://8.8.8.8/hook", "events": ["message.answered"], "on_busy": "enqueue",
         "priority": "interactive"}


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_text(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "string" and "enum" not in option for option in options)


def _cases(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, path, where, field) for every string a client may send."""
    cases = []
    for path, operations in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                for field, schema in _schema(document, body["schema"]).get("properties", {}).items():
                    if _is_text(schema) or _is_text(schema.get("items", {})):
                        cases.append((method, path, "body", field))
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and _is_text(parameter.get("schema", {})):
                    cases.append((method, path, "query", parameter["name"]))
    return cases


@pytest.fixture
def user(client) -> dict[str, Any]:
    """A user with a conversation and a message, whose ids fill the paths' placeholders."""
    name = f"nul-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {token(name)}"}
    accepted = client.post("/api/v1/chat", json={"message": "add buy milk"}, headers=headers).json
    return {"name": name, "headers": headers, "conversation_id": accepted["conversation_id"],
            "message_id": accepted["message"]["id"]}


def test_a_nul_in_any_text_a_client_sends_is_a_422_that_names_it(client, engine, user) -> None:
    document = client.get("/api/v1/openapi.json").json
    cases = _cases(document)
    assert {("post", "/api/v1/webhooks", "body", "url"), ("post", "/api/v1/chat", "body", "message"),
            ("get", "/api/v1/conversations", "query", "cursor")} <= set(cases)
    for method, path, where, field in cases:
        filled = path.format(conversation_id=user["conversation_id"], message_id=user["message_id"],
                             webhook_id=uuid.uuid4(), delivery_id=uuid.uuid4())
        if where == "body":
            body = {name: VALID.get(name, "hello") for name in
                    _schema(document, document["paths"][path][method]["requestBody"]["content"]["application/json"]
                            ["schema"]).get("required", [])}
            body[field] = [f"a\x00{field}"] if field == "events" else f"{VALID.get(field, 'hello')}\x00"
            response = client.open(filled, method=method.upper(), json=body, headers=user["headers"])
        else:
            required = {parameter["name"]: "hello" for parameter in document["paths"][path][method]["parameters"]
                        if parameter["in"] == "query" and parameter.get("required")}
            response = client.open(filled, method=method.upper(), query_string={**required, field: "a\x00b"},
                                   headers=user["headers"])
        assert response.status_code == 422, (method, path, field, response.status_code, response.get_data(True))
        assert response.json["detail"].startswith(field), (method, path, response.json["detail"])
    with engine.connect() as connection:  # nothing of it was stored
        mine = Conversation.user_id == user["name"]
        assert connection.scalar(select(func.count()).select_from(Conversation).where(mine)) == 1
        assert connection.scalar(select(func.count()).select_from(Message).where(Message.user_id == user["name"])) == 1
        assert connection.scalar(select(func.count()).select_from(WebhookEndpoint)
                                 .where(WebhookEndpoint.user_id == user["name"])) == 0
