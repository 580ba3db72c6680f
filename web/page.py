"""The chat page (`GET /`) and, in explicit dev mode only, a sign-in that hands out tokens."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

from .auth import issue_token
from .inputs import json_body
from .problems import Problem
from .schemas import DevSignIn, DevToken
from .spec import operation

bp = Blueprint("page", __name__, static_folder="static", static_url_path="/static",
               template_folder="templates")


@bp.get("/")
@operation("The chat page", responses={200: "text/html"}, authenticated=False)
def index() -> str:
    return render_template("index.html", dev_sign_in=current_app.config["DEV_TOKENS"])


@bp.post("/dev/token")
@operation("Dev mode only: a token for any user name", body=DevSignIn, responses={200: DevToken},
           authenticated=False)
def dev_token() -> dict[str, Any]:
    # Off unless the deployment runs in explicit dev mode: anyone could mint any user's token.
    if not current_app.config["DEV_TOKENS"]:
        raise Problem(404, "No such resource.")
    body = json_body(DevSignIn)
    return {"token": issue_token(current_app.config["AUTH_SECRET"], body.user), "user": body.user}
