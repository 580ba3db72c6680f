"""A write of a user's data never slips past their erasure (models/sql/erasure.py): while DELETE /me
runs, every call that would store something of the user's answers 409 with Retry-After, and
nothing of it is stored; once the erasure has finished, the user starts from nothing."""

from __future__ import annotations

from sqlalchemy.orm import Session

from models.sql.erasure import USER_WRITABLE

from .problems import Problem

# An erasure deletes in batches of a thousand rows, each a few milliseconds; a user with a large
# history takes seconds. The client asks again after this, and reads 409 until it is done.
ERASURE_RETRY_AFTER_SECONDS = 2


def erasure_running() -> Problem:
    return Problem(409, "Your data is being erased (DELETE /me); nothing new is stored until the erasure has "
                   "finished. Ask again in a moment.", slug="erasure-running",
                   headers={"Retry-After": str(ERASURE_RETRY_AFTER_SECONDS)})


def refuse_while_erasing(session: Session, user: str) -> None:
    """The first statement of a transaction that writes the user's data: takes the user's erasure
    lock (shared, to the commit) and raises 409 while an erasure of the user runs."""
    if not session.scalar(USER_WRITABLE, {"user": user}):
        raise erasure_running()
