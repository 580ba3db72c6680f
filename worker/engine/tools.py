"""The todo tools every engine uses. Each call is its own short transaction, so a generation
holds no transaction open, and each call is safe to replay: an attempt that lost its lease and
is generated again adds no task twice (tasks remember the message and call that created them).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from models import Task

MAX_TITLE = 500


def task_summary(task: Task, number: int | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"id": str(task.id), "title": task.title, "done": task.done}
    if number is not None:
        summary["number"] = number
    return summary


class TodoTools:
    """The user's todo list, as tools. Records every call it makes, in order."""

    def __init__(self, sessions: sessionmaker[Session], user: str, origin_message_id: uuid.UUID) -> None:
        self._sessions = sessions
        self._user = user
        self._origin = origin_message_id
        self.calls: list[dict[str, Any]] = []

    def _record(self, name: str, arguments: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        self.calls.append({"name": name, "arguments": arguments, "result": result})
        return result

    def _owned(self, session: Session, task_id: str) -> Task | None:
        try:
            ident = uuid.UUID(str(task_id))
        except ValueError:
            return None
        return session.scalars(select(Task).where(Task.id == ident, Task.user_id == self._user)).one_or_none()

    def add_task(self, title: str) -> dict[str, Any]:
        title = title.strip()[:MAX_TITLE]
        if not title:
            return self._record("add_task", {"title": title}, {"error": "a task needs a title"})
        call_index = len(self.calls)
        with self._sessions.begin() as session:
            session.execute(
                insert(Task)
                .values(user_id=self._user, title=title, origin_message_id=self._origin, origin_call=call_index)
                .on_conflict_do_nothing(constraint="uq_tasks_origin")
            )
            task = session.scalars(
                select(Task).where(Task.origin_message_id == self._origin, Task.origin_call == call_index)
            ).one()
            result = {"task": task_summary(task)}
        return self._record("add_task", {"title": title}, result)

    def list_tasks(self, status: str = "open") -> dict[str, Any]:
        with self._sessions.begin() as session:
            statement = select(Task).where(Task.user_id == self._user)
            if status != "all":
                statement = statement.where(Task.done.is_(status == "done"))
            rows = session.scalars(statement.order_by(Task.created_at, Task.id))
            tasks = [task_summary(task, number) for number, task in enumerate(rows, start=1)]
        return self._record("list_tasks", {"status": status}, {"tasks": tasks})

    def _change(self, name: str, task_id: str, arguments: dict[str, Any], **values: Any) -> dict[str, Any]:
        with self._sessions.begin() as session:
            task = self._owned(session, task_id)
            if task is None:
                result: dict[str, Any] = {"error": f"no task with id {task_id}"}
            elif name == "delete_task":
                result = {"task": task_summary(task)}
                session.execute(delete(Task).where(Task.id == task.id))
            else:
                session.execute(update(Task).where(Task.id == task.id).values(**values))
                session.refresh(task)
                result = {"task": task_summary(task)}
        return self._record(name, {"task_id": str(task_id), **arguments}, result)

    def complete_task(self, task_id: str) -> dict[str, Any]:
        return self._change("complete_task", task_id, {}, done=True)

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self._change("delete_task", task_id, {})

    def rename_task(self, task_id: str, title: str) -> dict[str, Any]:
        title = title.strip()[:MAX_TITLE]
        if not title:
            return self._record("rename_task", {"task_id": str(task_id), "title": title},
                                {"error": "a task needs a title"})
        return self._change("rename_task", task_id, {"title": title}, title=title)
