"""The chat page (`GET /`) and, in explicit dev mode only, a sign-in that hands out tokens."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app, render_template
from pydantic import BaseModel, StringConstraints

from .auth import issue_token
from .inputs import json_body
from .problems import Problem

bp = Blueprint("page", __name__, static_folder="static", static_url_path="/static",
               template_folder="templates")


class DevSignIn(BaseModel):
    user: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]


@bp.get("/")
def index() -> str:
    return render_template("index.html", dev_sign_in=current_app.config["DEV_TOKENS"])


@bp.post("/dev/token")
def dev_token() -> dict[str, Any]:
    # Off unless the deployment runs in explicit dev mode: anyone could mint any user's token.
    if not current_app.config["DEV_TOKENS"]:
        raise Problem(404, "No such resource.")
    body = json_body(DevSignIn)
    return {"token": issue_token(current_app.config["AUTH_SECRET"], body.user), "user": body.user}
