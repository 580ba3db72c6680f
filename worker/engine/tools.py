"""The todo tools every engine uses. Each call is one statement in autocommit, so a generation
holds no transaction open, and each call is safe to replay: an attempt that lost its lease and
is generated again adds no task twice (tasks remember the message and call that created them).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from models import Task

MAX_TITLE = 500
COLUMNS = (Task.id, Task.title, Task.done)

# The statements, built once with bound values: building a statement costs more than running it
# (docs/decisions/0010).
# (Named apart from the columns: insert() and update() reserve the column names for themselves.)
_USER, _ID, _TITLE = bindparam("user", type_=Task.user_id.type), bindparam("task_id"), bindparam("new_title")
_ORIGIN, _CALL = bindparam("origin"), bindparam("call")
_OPEN_COUNT = select(func.count()).where(Task.user_id == _USER, Task.done.is_(False))
_ADDED = (
    insert(Task)
    .values(user_id=_USER, title=_TITLE, origin_message_id=_ORIGIN, origin_call=_CALL)
    .on_conflict_do_nothing(constraint="uq_tasks_origin")
    .returning(*COLUMNS)
    .cte("added")
)
# The open count is read from the snapshot before the insert: the new task adds one.
ADD = select(_ADDED, _OPEN_COUNT.scalar_subquery().label("open_before"))
ADDED_BEFORE = select(*COLUMNS).where(Task.origin_message_id == _ORIGIN, Task.origin_call == _CALL)
_LISTED = select(*COLUMNS).where(Task.user_id == _USER)
LIST = {
    "open": _LISTED.where(Task.done.is_(False)).order_by(Task.created_at, Task.id),
    "done": _LISTED.where(Task.done.is_(True)).order_by(Task.created_at, Task.id),
    "all": _LISTED.order_by(Task.created_at, Task.id),
}
_OWNED = and_(Task.id == _ID, Task.user_id == _USER)
COMPLETE = update(Task).where(_OWNED).values(done=True, updated_at=func.now()).returning(*COLUMNS)
DELETE = delete(Task).where(_OWNED).returning(*COLUMNS)
RENAME = update(Task).where(_OWNED).values(title=_TITLE, updated_at=func.now()).returning(*COLUMNS)


def _clean_title(title: object) -> str:
    # A model may send anything: PostgreSQL text cannot hold NUL, and titles have a length.
    return str(title).replace("\x00", "").strip()[:MAX_TITLE]


def task_summary(row: Any, number: int | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"id": str(row.id), "title": row.title, "done": row.done}
    if number is not None:
        summary["number"] = number
    return summary


class TodoTools:
    """The user's todo list, as tools. Records every call it makes, in order."""

    def __init__(self, db: Engine, user: str, origin_message_id: uuid.UUID) -> None:
        self._db = db  # in autocommit
        self._user = user
        self._origin = origin_message_id
        self.calls: list[dict[str, Any]] = []

    def _record(self, name: str, arguments: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        self.calls.append({"name": name, "arguments": arguments, "result": result})
        return result

    def add_task(self, title: str) -> dict[str, Any]:
        title = _clean_title(title)
        if not title:
            return self._record("add_task", {"title": title}, {"error": "a task needs a title"})
        origin = {"origin": self._origin, "call": len(self.calls)}
        with self._db.connect() as connection:
            row = connection.execute(ADD, {"user": self._user, "new_title": title, **origin}).one_or_none()
            if row is None:  # a replayed generation: the task exists from the attempt before
                row = connection.execute(ADDED_BEFORE, origin).one()
                open_tasks = connection.execute(_OPEN_COUNT, {"user": self._user}).scalar_one()
            else:
                open_tasks = row.open_before + 1
        return self._record("add_task", {"title": title}, {"task": task_summary(row), "open_tasks": open_tasks})

    def list_tasks(self, status: str = "open") -> dict[str, Any]:
        with self._db.connect() as connection:
            rows = connection.execute(LIST.get(status, LIST["open"]), {"user": self._user}).all()
        tasks = [task_summary(row, number) for number, row in enumerate(rows, start=1)]
        return self._record("list_tasks", {"status": status}, {"tasks": tasks})

    def _change(self, name: str, task_id: str, arguments: dict[str, Any], statement: Any,
                values: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            ident = uuid.UUID(str(task_id))
        except ValueError:
            ident = None
        row = None
        if ident is not None:
            with self._db.connect() as connection:
                bound = {"task_id": ident, "user": self._user, **(values or {})}
                row = connection.execute(statement, bound).one_or_none()
        result = {"task": task_summary(row)} if row is not None else {"error": f"no task with id {task_id}"}
        return self._record(name, {"task_id": str(task_id), **arguments}, result)

    def complete_task(self, task_id: str) -> dict[str, Any]:
        return self._change("complete_task", task_id, {}, COMPLETE)

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self._change("delete_task", task_id, {}, DELETE)

    def rename_task(self, task_id: str, title: str) -> dict[str, Any]:
        title = _clean_title(title)
        if not title:
            return self._record("rename_task", {"task_id": str(task_id), "title": title},
                                {"error": "a task needs a title"})
        return self._change("rename_task", task_id, {"title": title}, RENAME, {"new_title": title})
