"""The OpenAPI 3.1 document, generated from the app's route table and the schemas in
web/schemas.py, served at /api/v1/openapi.json with a small docs page at /api/v1/docs."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, render_template
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .schemas import ProblemOut
from .spec import Operation, operation

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")
REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
PATH_PARAMETER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


@bp.get("/openapi.json")
@operation("This document", responses={200: "application/json"}, authenticated=False)
def openapi_json() -> dict[str, Any]:
    return build_document(current_app)


@bp.get("/docs")
@operation("Human-readable API documentation", responses={200: "text/html"}, authenticated=False)
def docs() -> str:
    return render_template("docs.html")


def _operations(app: Flask) -> list[tuple[str, str, Operation]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        spec = getattr(view, "openapi", None) or Operation(f"(undocumented) {rule.endpoint}")
        path = PATH_PARAMETER.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((path, method.lower(), spec))
    return found


def _models(operations: list[tuple[str, str, Operation]]) -> list[tuple[type[BaseModel], str]]:
    wanted: dict[tuple[type[BaseModel], str], None] = {(ProblemOut, "serialization"): None}
    for _path, _method, spec in operations:
        if spec.body:
            wanted[(spec.body, "validation")] = None
        for answer in [*spec.responses.values(), spec.errors]:
            answer = answer[0] if isinstance(answer, tuple) else answer
            if isinstance(answer, type) and issubclass(answer, BaseModel):
                wanted[(answer, "serialization")] = None
    return list(wanted)


def build_document(app: Flask) -> dict[str, Any]:
    operations = _operations(app)
    refs, definitions = models_json_schema(_models(operations), ref_template=REF)

    def ref(model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        return refs[(model, mode)]

    problem = {"description": "A problem (RFC 9457)", "content": {PROBLEM: {"schema": ref(ProblemOut)}}}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, spec in operations:
        entry: dict[str, Any] = {"summary": spec.summary, "operationId": f"{method}_{path}", "responses": {}}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{([a-z_]+)}", path)
        ]
        if spec.query:
            schema = spec.query.model_json_schema()
            for name, prop in schema.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k != "title"}
                parameters.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                                   "schema": prop})
        parameters += [{"name": name, "in": "header", "required": False, "description": text,
                        "schema": {"type": "string"}} for name, text in spec.headers.items()]
        if parameters:
            entry["parameters"] = parameters
        if spec.body:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(spec.body,
                                                                                                   "validation")}}}
        for status, answer in spec.responses.items():
            if answer is None:
                entry["responses"][str(status)] = {"description": "No content"}
            elif isinstance(answer, str):
                entry["responses"][str(status)] = {"description": answer, "content": {answer: {"schema": {}}}}
            elif isinstance(answer, tuple):  # JSON, or (asked for) another media type: an event stream
                model, media = answer
                entry["responses"][str(status)] = {"description": f"{model.__name__}, or {media}", "content": {
                    "application/json": {"schema": ref(model)}, media: {"schema": {}}}}
            else:
                entry["responses"][str(status)] = {"description": answer.__name__,
                                                   "content": {"application/json": {"schema": ref(answer)}}}
        entry["responses"]["default"] = problem if spec.errors is None else {
            "description": "An error in OpenAI's shape", "content": {"application/json": {"schema": ref(spec.errors)}}}
        if spec.authenticated:
            entry["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatq", "version": "1", "description": "A worker-queue chat processor with a "
                 "todo assistant. Every error under /api is application/problem+json; under /v1 (the OpenAI-"
                 "compatible API), OpenAI's error shape."},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
