"""Developer commands: `flask --app web token alice` prints a bearer token for user alice."""

from __future__ import annotations

import click
from flask import Flask, current_app

from .auth import issue_token


def init_app(app: Flask) -> None:
    @app.cli.command("token")
    @click.argument("user")
    @click.option("--ttl", default=7 * 24 * 3600, show_default=True, help="Lifetime in seconds.")
    def token(user: str, ttl: int) -> None:
        """Print a bearer token for USER, signed with this deployment's AUTH_SECRET."""
        click.echo(issue_token(current_app.config["AUTH_SECRET"], user, ttl_seconds=ttl))
