"""The built-in todo assistant: no network, no model. It reads what the user wrote, calls the
todo tools, and reads the conversation's earlier tool calls to resolve "it" and "what did I just
add?"."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .base import Reply, ReplyRequest, Turn, continued
from .tools import TodoTools

IT = re.compile(r"^(?:it|that|this|that one|this one|the last one|that task|this task)$", re.I)
NUMBER = re.compile(r"^(?:task\s*|number\s*|no\.?\s*)?#?(\d{1,4})$", re.I)
TRAILING = ".!?,; \t\n"

# (pattern, intent) in the order they are tried; the first that matches wins.
INTENTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?:help|\?+|what can you do|what do you do|commands|how does this work)\b", re.I), "help"),
    (re.compile(r"^what (?:did|have) i (?:just |last )?add(?:ed)?\b|^what was the last (?:task |thing )?(?:i )?added"
                r"|^(?:which|what) task did i (?:just )?add", re.I), "last_added"),
    (re.compile(r"^rename(?: task)?\s+(?P<ref>.+?)\s+(?:to|as|into)\s+(?P<title>.+)$", re.I), "rename"),
    (re.compile(r"^(?:add|new|create)\s+task\s*:\s*(?P<title>.+)$", re.I), "add"),
    (re.compile(r"^(?:new|create)\s+task\s+(?P<title>.+)$", re.I), "add"),
    (re.compile(r"^(?:please\s+)?remind me to\s+(?P<title>.+)$", re.I), "add"),
    (re.compile(r"^(?:please\s+)?(?:add|put)\s+(?P<title>.+?)(?:\s+(?:to|on) my (?:todo |to-do |task )?list)?$",
                re.I), "add"),
    (re.compile(r"^(?:show|list|display|see|view|give)(?: me)?(?: all)?(?: of)?(?: my| the)?(?: open)?"
                r" (?:tasks|todos|to-dos|todo list|to-do list|list)\b"
                r"|^what'?s on my (?:todo |to-do |task )?list|^what is on my (?:todo |to-do |task )?list"
                r"|^(?:my )?(?:tasks|todos|list)$|^what (?:do i have to do|are my tasks)", re.I), "list"),
    (re.compile(r"^mark\s+(?P<ref>.+?)\s+(?:as\s+)?(?:done|complete|completed|finished)$", re.I), "complete"),
    (re.compile(r"^(?:done|complete|completed|finish|finished|check off|tick off|close)(?: task)?\s+(?P<ref>.+)$",
                re.I), "complete"),
    (re.compile(r"^(?:i (?:have )?)?(?:finished|completed)\s+(?P<ref>.+)$", re.I), "complete"),
    (re.compile(r"^(?:delete|remove|drop|cancel|forget)(?: task)?\s+(?P<ref>.+)$", re.I), "delete"),
]

HELP = (
    "I keep your todo list. You can say:\n"
    "• “Add task: buy milk” or “remind me to call mom” to add a task\n"
    "• “show my tasks” to see your open tasks, numbered\n"
    "• “done 2”, “complete buy milk” or “mark it as done” to complete one\n"
    "• “delete buy milk” or “remove task 1” to delete one\n"
    "• “rename 1 to buy oat milk” to rename one\n"
    "• “what did I just add?” to recall the last task you added here"
)
FALLBACK = (
    "Hi! I'm your todo assistant. I can add, list, complete, delete and rename tasks — "
    "try “Add task: buy milk” or “show my tasks”, or say “help”."
)


def _quote(title: str) -> str:
    return f"“{title}”"


def _clean(text: str) -> str:
    return " ".join(text.split()).strip(TRAILING)


def _strip_quotes(text: str) -> str:
    return text.strip().strip("\"'“”‘’").strip()


class BuiltinEngine:
    def __init__(self, delay_ms: int = 0, stream_delay_ms: int = 0) -> None:
        self._delay = delay_ms / 1000
        self._stream_delay = stream_delay_ms / 1000

    def reserve(self, stopping: Callable[[], bool]) -> None:
        return None  # it answers in this process: every worker has room

    def reply(self, request: ReplyRequest) -> Reply:
        cancellation = request.cancellation
        if self._delay and cancellation.wait(self._delay):  # fault tests: a generation slow enough to kill
            return Reply(content="", tool_calls=[], finish="cancelled")
        # After a crash the tools replay what they did, so the answer comes out the same, and only
        # what follows the text an earlier attempt handed on is handed on now.
        content = continued(request.written, self._answer(request))
        tool_calls = list(request.tools.calls)  # run already: a cancel from here on keeps what they did
        if not self._stream_delay:
            return Reply(content=content, tool_calls=tool_calls)
        # Streaming mode: the answer goes out a word at a time, and a cancel stops it between words.
        words = re.findall(r"\S+\s*|\s+", content[len(request.written):])
        for count, word in enumerate(words):
            if count and cancellation.wait(self._stream_delay):
                return Reply(content=request.written + "".join(words[:count]), tool_calls=tool_calls,
                             finish="cancelled")
            if request.on_delta is not None:
                request.on_delta(word)
        return Reply(content=content, tool_calls=tool_calls)

    def _answer(self, request: ReplyRequest) -> str:
        text = _clean(request.content)
        for pattern, intent in INTENTS:
            match = pattern.match(text)
            if match:
                content = getattr(self, f"_{intent}")(request, **match.groupdict())
                break
        else:
            content = FALLBACK
        return content

    # Intents -------------------------------------------------------------------------------------

    def _help(self, request: ReplyRequest) -> str:
        return HELP

    def _add(self, request: ReplyRequest, title: str) -> str:
        title = _strip_quotes(title)
        result = request.tools.add_task(title)
        if "error" in result:
            return "What should the task say? For example: “Add task: buy milk”."
        open_count = result["open_tasks"]
        return f"Added {_quote(result['task']['title'])} to your list. You have {open_count} open " + (
            "task." if open_count == 1 else "tasks."
        )

    def _last_added(self, request: ReplyRequest) -> str:
        for turn in reversed(request.history):
            for call in reversed(turn.tool_calls):
                if call.get("name") == "add_task" and "task" in call.get("result", {}):
                    return f"You just added {_quote(call['result']['task']['title'])}."
        return "You haven't added a task in this conversation yet. Try “Add task: buy milk”."

    def _list(self, request: ReplyRequest) -> str:
        tasks = request.tools.list_tasks()["tasks"]
        if not tasks:
            return "Your list is empty. Add something with “Add task: buy milk”."
        lines = [f"{task['number']}. {task['title']}" for task in tasks]
        return "Your open tasks:\n" + "\n".join(lines)

    def _complete(self, request: ReplyRequest, ref: str) -> str:
        task = self._resolve(request, ref)
        if isinstance(task, str):
            return task
        request.tools.complete_task(task["id"])
        return f"Marked {_quote(task['title'])} as done. Nice work!"

    def _delete(self, request: ReplyRequest, ref: str) -> str:
        task = self._resolve(request, ref)
        if isinstance(task, str):
            return task
        request.tools.delete_task(task["id"])
        return f"Deleted {_quote(task['title'])} from your list."

    def _rename(self, request: ReplyRequest, ref: str, title: str) -> str:
        task = self._resolve(request, ref)
        if isinstance(task, str):
            return task
        new_title = _strip_quotes(title)
        result = request.tools.rename_task(task["id"], new_title)
        if "error" in result:
            return "What should the new name be? For example: “rename 1 to buy oat milk”."
        return f"Renamed {_quote(task['title'])} to {_quote(result['task']['title'])}."

    # References ----------------------------------------------------------------------------------

    def _resolve(self, request: ReplyRequest, ref: str) -> dict[str, Any] | str:
        """A task the user referred to, or a sentence that says why none was found."""
        ref = _strip_quotes(ref)
        tools: TodoTools = request.tools
        if IT.match(ref):
            task = self._last_mentioned(request.history, tools)
            return task or "I'm not sure which task you mean. Say “show my tasks” and pick one by number."
        number = NUMBER.match(ref)
        if number:
            tasks = tools.list_tasks()["tasks"]
            index = int(number.group(1))
            if 1 <= index <= len(tasks):
                return tasks[index - 1]
            if not tasks:
                return "Your list is empty, so there is no task " + str(index) + "."
            return f"There is no task {index}: your list has {len(tasks)}. Say “show my tasks” to see it."
        name = re.sub(r"^(?:the\s+)?task\s+", "", ref, flags=re.I) if not NUMBER.match(ref) else ref
        everything = tools.list_tasks("all")["tasks"]
        candidates = [t for t in everything if not t["done"]] + [t for t in everything if t["done"]]
        for wanted in (ref.casefold(), name.casefold()):
            for task in candidates:
                if task["title"].casefold() == wanted:
                    return task
        partial = [t for t in candidates if name.casefold() in t["title"].casefold()]
        if len(partial) == 1:
            return partial[0]
        if len(partial) > 1:
            options = ", ".join(_quote(t["title"]) for t in partial[:5])
            return f"More than one task matches {_quote(ref)}: {options}. Which one? You can use its number."
        return f"I couldn't find a task matching {_quote(ref)}. Say “show my tasks” to see your list."

    @staticmethod
    def _last_mentioned(history: Sequence[Turn], tools: TodoTools) -> dict[str, Any] | None:
        """`it`: the task named by the latest tool call in this conversation that still exists."""
        current = {t["id"]: t for t in tools.list_tasks("all")["tasks"]}
        for turn in reversed(history):
            for call in reversed(turn.tool_calls):
                task = call.get("result", {}).get("task")
                if task and call.get("name") != "delete_task":
                    return current.get(task["id"])
        return None
