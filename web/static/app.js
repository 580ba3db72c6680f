// chatq's chat page: plain JavaScript, no build step. Everything it shows comes from the API, so a
// reload (or a different web node behind the load balancer) restores it all.
"use strict";

const $ = (id) => document.getElementById(id);
const WAIT_SECONDS = 25;
const state = {
  token: null, user: null, conversationId: null, items: new Map(), waiting: new Set(),
  drafts: new Map(),  // question id -> {attempt, text, pieces}: a reply still being written
  versions: null,     // {questionId, items (newest first), shown}: the latest question's replies
  editing: null,      // {questionId, text}: the latest question being edited
  stream: null,       // the AbortController of the conversation's event stream
  sending: null,      // the promise of the last send: sends go in order
  found: null,        // the seq of the message a search hit opened: marked until another conversation
  queueRead: null,    // a pending re-read of the waiting questions' places (a timer)
};

// --- API -----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signOut();
    throw new ApiError(401, await response.json().catch(() => null));
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response.status === 204 ? null : response.json();
}

// POSTs of messages carry an Idempotency-Key and are retried on network errors and 503s, so a
// flaky connection never sends a message twice.
async function postMessage(path, body) {
  const key = crypto.randomUUID();
  for (let attempt = 0; ; attempt++) {
    try {
      return await api("POST", path, body, { "Idempotency-Key": key });
    } catch (error) {
      const transient = !(error instanceof ApiError) || error.status === 503 || error.status === 429;
      if (!transient || attempt >= 4) throw error;
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
    }
  }
}

// --- Sign in -------------------------------------------------------------------------------------

function showSignIn() {
  const dev = document.body.dataset.devSignIn === "1";
  $("dev-sign-in").hidden = !dev;
  $("token-sign-in").hidden = dev;
  $("app").hidden = true;
  $("sign-in").hidden = false;
  (dev ? $("user-name") : $("token")).focus();
}

async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    if (document.body.dataset.devSignIn === "1") {
      if (!$("user-name").value.trim()) throw new Error("Type a name to sign in with.");
      const response = await fetch("/dev/token", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user: $("user-name").value.trim() }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || "Could not sign in");
      localStorage.setItem("chatq.token", body.token);
    } else {
      localStorage.setItem("chatq.token", $("token").value.trim());
    }
    await start();
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
}

function signOut(notice = "") {
  localStorage.removeItem("chatq.token");
  state.token = null;
  if (state.stream) state.stream.abort();
  $("signed-out-notice").textContent = notice;
  $("signed-out-notice").hidden = !notice;
  showSignIn();
}

function userFromToken(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.sub;
  } catch {
    return null;
  }
}

// --- Conversations -------------------------------------------------------------------------------

async function loadConversations() {
  const page = await api("GET", "/api/v1/conversations?limit=50");
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of page.items) {
    const item = document.createElement("li");
    item.classList.toggle("active", conversation.id === state.conversationId);
    const button = document.createElement("button");
    button.textContent = conversation.title || "Untitled";
    button.title = conversation.title;
    button.addEventListener("click", () => { closePanels(); selectConversation(conversation.id); });
    item.append(button);
    list.append(item);
  }
}

async function selectConversation(conversationId) {
  if (state.stream) state.stream.abort();
  state.conversationId = conversationId;
  state.items = new Map();
  state.drafts = new Map();
  state.versions = null;
  state.editing = null;
  state.found = null;
  notify("");
  history.replaceState(null, "", conversationId ? `#c=${conversationId}` : "#");
  $("conversation-title").textContent = "New conversation";
  render();
  if (conversationId) {
    try {
      const conversation = await api("GET", `/api/v1/conversations/${conversationId}`);
      $("conversation-title").textContent = conversation.title || "Untitled";
      let after = 0;
      for (;;) {
        const page = await api("GET", `/api/v1/conversations/${conversationId}/messages?after=${after}&limit=100`);
        page.items.forEach(remember);
        if (page.items.length < 100) break;
        after = page.last_seq;
      }
    } catch (error) {
      if (error.status !== 404) throw error;
      await selectConversation(null);
      return notify("That conversation no longer exists (it was deleted, perhaps on another device).");
    }
    render();
    for (const item of state.items.values()) {
      if (item.role === "user" && isPending(item)) waitForReply(item.id);
    }
    loadVersions();
  }
  await loadConversations();
  if (conversationId) followEvents(conversationId);
  $("message").focus();
}

// --- Messages ------------------------------------------------------------------------------------

// Not final yet: a cancelling question's worker is still storing what it wrote.
const isPending = (message) => ["queued", "processing", "cancelling"].includes(message.status);

// Where a queued question stands, as the API estimates it: "3 ahead of you · about 12 s", and no
// time where the API has no estimate.
function queuedText(queue) {
  if (!queue) return "Queued…";
  const place = queue.ahead === 0 ? "Next in line" : `${queue.ahead} ahead of you`;
  return queue.eta_seconds == null ? place : `${place} · about ${queue.eta_seconds} s`;
}

// While questions of the open conversation wait, their place is read again every few seconds:
// the long-poll only answers when they are done.
const QUEUE_REFRESH_MS = 3000;
async function refreshQueued() {
  const conversationId = state.conversationId;
  const queued = [...state.items.values()].filter((m) => m.role === "user" && m.status === "queued").slice(0, 10);
  for (const question of queued) {
    try {
      const message = await api("GET", `/api/v1/messages/${question.id}`);
      if (state.conversationId !== conversationId) return;
      remember(message);
    } catch (error) {
      if (error.status !== 404) console.error(error);
    }
  }
  if (queued.length) render();
}

// A question of this conversation started or ended: the ones behind it moved up; read them soon.
function refreshQueuedSoon() {
  if (state.queueRead) return;
  state.queueRead = setTimeout(() => { state.queueRead = null; refreshQueued(); }, 150);
}

function remember(message) {
  if (message.role === "assistant") {
    if (message.current === false) {  // an earlier version, replaced by a regenerate
      state.items.delete(message.id);
      return;
    }
    state.items.set(message.id, message);
    state.drafts.delete(message.reply_to);
    return;
  }
  const known = state.items.get(message.id);
  if (message.status === "queued" && !message.queue && known && known.queue) message.queue = known.queue;
  state.items.set(message.id, message);
  if (message.reply) {
    // The question's current reply only: a regenerate replaced the others. (A question without a
    // reply removes none: it may be an older read arriving after its reply.)
    forgetReplies(message.id, message.reply.id);
    state.items.set(message.reply.id, message.reply);
    state.drafts.delete(message.id);
  } else if (message.partial) {  // what was written so far: the stream continues from its last piece
    state.drafts.set(message.id, { ...message.partial });
  } else if (message.status === "queued") {
    state.drafts.delete(message.id);
  }
}

function forgetReplies(questionId, keepId) {
  for (const item of [...state.items.values()]) {
    if (item.reply_to === questionId && item.id !== keepId) state.items.delete(item.id);
  }
}

const latestQuestion = () => [...state.items.values()].filter((m) => m.role === "user").sort((a, b) => b.seq - a.seq)[0];

function button(className, label, onClick) {
  const element = document.createElement("button");
  element.className = className;
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}

// The reply shown for the latest question: the version picked with ‹ ›, or the current one.
function shownReply(message) {
  const versions = state.versions;
  if (!versions || versions.questionId !== message.reply_to || versions.items.length < 2) return message;
  return versions.items[versions.shown] || message;
}

function versionControls(reply) {
  const versions = state.versions;
  const bar = document.createElement("li");
  bar.className = "reply-actions";
  if (versions && versions.questionId === reply.reply_to && versions.items.length > 1) {
    const count = versions.items.length;
    const position = count - versions.shown;  // 1 is the oldest
    const older = button("version older", "‹", () => { versions.shown = Math.min(count - 1, versions.shown + 1); render(); });
    older.disabled = position === 1;
    const label = document.createElement("span");
    label.className = "version-label";
    label.textContent = `${position}/${count}`;
    const newer = button("version newer", "›", () => { versions.shown = Math.max(0, versions.shown - 1); render(); });
    newer.disabled = position === count;
    bar.append(older, label, newer);
  }
  bar.append(button("regenerate", "Regenerate", () => regenerate(reply.reply_to)));
  return bar;
}

// Each reply right under its question, whatever was stored in between: four questions sent at
// once are answered after all four, and would otherwise read as four questions, then four answers.
function inConversationOrder() {
  const bySeq = [...state.items.values()].sort((a, b) => a.seq - b.seq);
  const replies = new Map(bySeq.filter((m) => m.role === "assistant").map((reply) => [reply.reply_to, reply]));
  const ordered = [];
  for (const message of bySeq) {
    if (message.role === "assistant") {
      if (!state.items.has(message.reply_to)) ordered.push(message);  // its question is not loaded
      continue;
    }
    ordered.push(message);
    if (replies.has(message.id)) ordered.push(replies.get(message.id));
  }
  return ordered;
}

function render() {
  const list = $("messages");
  list.replaceChildren();
  const items = inConversationOrder();
  $("delete-conversation").hidden = !state.conversationId;
  $("empty").hidden = items.length > 0;
  const latest = latestQuestion();
  const lastIsFinal = latest && !isPending(latest);
  for (const message of items) {
    const shown = message.role === "assistant" ? shownReply(message) : message;
    const bubble = document.createElement("li");
    bubble.className = `message ${message.role}`;
    if (shown.finish === "cancelled") bubble.classList.add("stopped");
    if (shown.finish === "length") bubble.classList.add("cut-short");
    bubble.dataset.id = message.id;
    bubble.dataset.seq = message.seq;
    bubble.classList.toggle("found", message.seq === state.found);
    bubble.textContent = shown.content;
    if (state.editing && state.editing.questionId === message.id) {
      list.append(editor(message));
      continue;
    }
    list.append(bubble);
    if (message.role === "assistant") {
      if (shown.finish === "cancelled" || shown.finish === "length") {
        const note = document.createElement("li");
        note.className = "status note";
        note.textContent = shown.finish === "cancelled" ? "Stopped" : "Cut short: the model reached its output limit";
        list.append(note);
      }
      if (lastIsFinal && message.reply_to === latest.id) list.append(versionControls(message));
      continue;
    }
    if (lastIsFinal && message.id === latest.id) {
      const actions = document.createElement("li");
      actions.className = "question-actions";
      actions.append(button("edit", "Edit", () => { state.editing = { questionId: message.id, text: message.content }; render(); }));
      if (!message.reply) actions.append(button("regenerate", "Regenerate", () => regenerate(message.id)));
      list.append(actions);
    }
    if (isPending(message)) {
      const status = document.createElement("li");
      status.className = "status pending";
      status.textContent = { queued: queuedText(message.queue), processing: "Thinking…" }[message.status] || "Stopping…";
      if (message.status !== "cancelling") status.append(button("stop", "Stop", () => stopGenerating(message.id)));
      list.append(status);
      const draft = state.drafts.get(message.id);
      if (!message.reply && draft && draft.text) {
        const bubble = document.createElement("li");
        bubble.className = "message assistant draft";
        bubble.textContent = draft.text;
        list.append(bubble);
      } else if (!message.reply) {
        const typing = document.createElement("li");
        typing.className = "typing";
        typing.setAttribute("aria-label", "The assistant is answering");
        typing.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
        list.append(typing);
      }
    } else if (message.status === "failed") {
      const status = document.createElement("li");
      status.className = "status failed";
      status.textContent = `Not answered: ${message.error || "unknown error"} `;
      const retry = document.createElement("button");
      retry.className = "retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => retryMessage(message.id));
      status.append(retry);
      list.append(status);
    } else if (message.status === "expired") {
      const status = document.createElement("li");
      status.className = "status expired";
      status.textContent = "Expired: not started in time";
      list.append(status);
    } else if (message.status === "cancelled" && !message.reply) {
      const status = document.createElement("li");
      status.className = "status cancelled";
      status.textContent = "Stopped";
      list.append(status);
    }
  }
  list.scrollTop = list.scrollHeight;
}

function editor(message) {
  const form = document.createElement("li");
  form.className = "message user editing";
  const box = document.createElement("textarea");
  box.className = "edit-box";
  box.value = state.editing.text;
  box.addEventListener("input", () => { state.editing.text = box.value; });
  const save = button("primary save-edit", "Save and send", () => {
    const content = state.editing.text;
    if (!content.trim()) return;
    state.editing = null;
    regenerate(message.id, content);
  });
  const cancel = button("link cancel-edit", "Cancel", () => { state.editing = null; render(); });
  form.append(box, save, cancel);
  return form;
}

// Stop: the question whose Stop was pressed, and no other. A reply being written keeps the text
// written so far; the questions after it are answered as they would have been.
async function stopGenerating(questionId) {
  try {
    remember(await api("POST", `/api/v1/messages/${questionId}/cancel`));
  } catch (error) {
    if (error.status !== 409) throw error;  // answered meanwhile: the reply is on its way
  }
  render();
}

async function regenerate(questionId, content) {
  try {
    const accepted = await api("POST", `/api/v1/messages/${questionId}/regenerate`,
      content === undefined ? {} : { content });
    state.versions = null;
    forgetReplies(questionId, null);  // its new reply replaces them
    remember(accepted.message);
    render();
    waitForReply(questionId);
  } catch (error) {
    alert(`Could not regenerate: ${error.message}`);
  }
}

// The latest question's replies, when it has more than one: the ‹ 1/2 › switch.
async function loadVersions() {
  const latest = latestQuestion();
  if (!latest || isPending(latest)) return;
  const conversationId = state.conversationId;
  try {
    const { items } = await api("GET", `/api/v1/messages/${latest.id}/replies`);
    if (state.conversationId !== conversationId) return;
    state.versions = { questionId: latest.id, items, shown: 0 };
    render();
  } catch (error) {
    if (error.status !== 404) console.error(error);
  }
}

// Long-poll one message until it is answered or failed: the server returns as soon as the reply
// is committed, on whichever web node the request lands.
async function waitForReply(messageId) {
  if (state.waiting.has(messageId)) return;
  state.waiting.add(messageId);
  const conversationId = state.conversationId;
  try {
    for (;;) {
      let message;
      try {
        message = await api("GET", `/api/v1/messages/${messageId}?wait=${WAIT_SECONDS}`);
      } catch (error) {
        if (error.status === 404 || error.status === 401) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      if (state.conversationId !== conversationId) return;
      remember(message);
      render();
      if (!isPending(message)) {
        await Promise.all([loadTasks(), loadVersions()]);
        return;
      }
    }
  } finally {
    state.waiting.delete(messageId);
  }
}

// Sends go one after another: a message typed while the first one of a new conversation is still
// on its way must land in that conversation, not start another.
function send(event) {
  event.preventDefault();
  const box = $("message");
  const content = box.value;
  if (!content.trim()) return;
  box.value = "";
  autosize();
  state.sending = (state.sending || Promise.resolve()).then(() => deliver(content));
}

async function deliver(content) {
  try {
    const accepted = state.conversationId
      ? await postMessage(`/api/v1/conversations/${state.conversationId}/messages`, { content })
      : await postMessage("/api/v1/chat", { message: content });
    if (!state.conversationId) {
      state.conversationId = accepted.conversation_id;
      history.replaceState(null, "", `#c=${accepted.conversation_id}`);
      $("conversation-title").textContent = content.slice(0, 60);
      loadConversations();
      followEvents(accepted.conversation_id);
    }
    remember(accepted.message);
    render();
    waitForReply(accepted.message.id);
  } catch (error) {
    $("message").value = content;
    if (error.status === 404 && state.conversationId) {
      // Deleted meanwhile (elsewhere, or by an erasure of the account): show what is left.
      await selectConversation(null);
      $("message").value = content;
      notify("That conversation no longer exists (it was deleted, perhaps on another device). "
             + "Your message was not sent; send it again to start a new conversation.");
    } else if (error.status === 409) {
      notify(`Your message was not sent: ${error.message}`);
    } else {
      alert(`Your message was not sent: ${error.message}`);
    }
  }
}

// A notice above the messages: what happened that the page did not do itself.
function notify(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

async function deleteConversation() {
  const conversationId = state.conversationId;
  if (!conversationId || !confirm("Delete this conversation and all its messages? This cannot be undone.")) return;
  try {
    await api("DELETE", `/api/v1/conversations/${conversationId}`);
  } catch (error) {
    if (error.status !== 404) return alert(`Could not delete the conversation: ${error.message}`);
  }
  await selectConversation(null);
  notify("The conversation was deleted.");
}

async function deleteAccount() {
  if (!confirm("Delete your account? Every conversation, message and task of yours is erased, on every "
               + "device. This cannot be undone.")) return;
  try {
    await api("DELETE", "/api/v1/me");
  } catch (error) {
    return alert(`Could not delete your account: ${error.message}`);
  }
  signOut("Your account is being erased: every conversation, message and task. Signing in again starts afresh.");
}

async function retryMessage(messageId) {
  const accepted = await api("POST", `/api/v1/messages/${messageId}/retry`);
  remember(accepted.message);
  render();
  waitForReply(messageId);
}

// The conversation's event stream, read with fetch() (EventSource cannot send a bearer token).
// It carries the model's text as it is generated ("delta" events) and every new message; the
// long-polls above remain the source of truth for each question's final state.
async function followEvents(conversationId) {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let lastEventId = Math.max(0, ...[...state.items.values()].map((m) => m.seq));
  while (!controller.signal.aborted && state.conversationId === conversationId) {
    try {
      const response = await fetch(`/api/v1/conversations/${conversationId}/events`, {
        headers: { Authorization: `Bearer ${state.token}`, "Last-Event-ID": String(lastEventId) },
        signal: controller.signal,
      });
      if (!response.ok) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event.id) lastEventId = Number(event.id);
          if (event.data && state.conversationId === conversationId) onEvent(event);
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function parseEvent(block) {
  const event = { type: "message", id: null, data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const [field, ...rest] = line.split(":");
    const value = rest.join(":").replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "id") event.id = value;
    else if (field === "data") event.data += value;
  }
  return event;
}

function onEvent(event) {
  const data = JSON.parse(event.data);
  if (event.type === "delta") {
    // The server sends each piece once, in order, after the text so far (a message's `partial`);
    // a new attempt (after a crash) is sent from piece 0 (the text it continues) and replaces the draft.
    const draft = state.drafts.get(data.message_id);
    if (draft && draft.attempt === data.attempt && data.index === draft.pieces) {
      draft.text += data.text;
      draft.pieces += 1;
    } else if ((!draft || draft.attempt !== data.attempt) && data.index === 0) {
      state.drafts.set(data.message_id, { attempt: data.attempt, text: data.text, pieces: 1 });
    } else {
      return;
    }
  } else {
    remember(data);
    if (data.role === "user" && data.status !== "queued") refreshQueuedSoon();
    const latest = latestQuestion();
    if (data.role === "assistant" && latest && data.reply_to === latest.id) loadVersions();
  }
  render();
}

// --- Tasks ---------------------------------------------------------------------------------------

async function loadTasks() {
  const { items } = await api("GET", "/api/v1/tasks?status=all");
  const open = items.filter((task) => !task.done);
  const fill = (list, tasks) => list.replaceChildren(...tasks.map((task) => {
    const item = document.createElement("li");
    item.textContent = task.title;
    return item;
  }));
  fill($("task-list"), open);
  fill($("done-list"), items.filter((task) => task.done));
  $("task-count").textContent = String(open.length);
  $("task-count-mobile").textContent = String(open.length);
}

// --- Search and export ---------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const q = $("search").value.trim();
  const list = $("search-results");
  list.hidden = !q;
  if (!q) return list.replaceChildren();
  const { items } = await api("GET", `/api/v1/search?q=${encodeURIComponent(q)}&limit=20`);
  if (!items.length) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = "No message matches.";
    return list.replaceChildren(none);
  }
  list.replaceChildren(...items.map((hit) => {
    const item = document.createElement("li");
    const open = document.createElement("button");
    open.className = "hit";
    // The snippet is plain text; the matched words are marked from their offsets, never as HTML.
    // The API counts characters (code points); a JavaScript string counts UTF-16 units, two for
    // an emoji: slice the snippet's characters, not the string.
    const chars = Array.from(hit.snippet);
    let at = 0;
    for (const [start, end] of hit.highlights) {
      open.append(chars.slice(at, start).join(""));
      const mark = document.createElement("mark");
      mark.textContent = chars.slice(start, end).join("");
      open.append(mark);
      at = end;
    }
    open.append(chars.slice(at).join(""));
    const where = document.createElement("small");
    where.textContent = hit.conversation_title || "Untitled";
    open.append(where);
    open.addEventListener("click", () => openHit(hit));
    item.append(open);
    return item;
  }));
}

async function openHit(hit) {
  closePanels();
  $("search-results").hidden = true;
  await selectConversation(hit.conversation_id);
  state.found = hit.seq;
  render();
  const bubble = document.querySelector(`#messages [data-seq="${hit.seq}"]`);
  if (bubble) bubble.scrollIntoView({ block: "center" });
}

// The export is streamed by the API (NDJSON); the page saves it as a file.
async function exportData() {
  const status = $("export-status");
  status.hidden = false;
  status.textContent = "Preparing your export…";
  const response = await fetch("/api/v1/export", { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok) {
    const error = new ApiError(response.status, await response.json().catch(() => null));
    status.textContent = `Export failed: ${error.message}`;
    throw error;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "chatq-export.ndjson";
  link.click();
  status.textContent = "Export saved as chatq-export.ndjson.";
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// --- On a phone: the menu and the tasks slide over the conversation -----------------------------

function openPanel(name) {
  $("app").classList.add(`${name}-open`);
  $(name === "menu" ? "open-menu" : "open-tasks").setAttribute("aria-expanded", "true");
}

function closePanels() {
  $("app").classList.remove("menu-open", "tasks-open");
  $("open-menu").setAttribute("aria-expanded", "false");
  $("open-tasks").setAttribute("aria-expanded", "false");
}

// --- Start ---------------------------------------------------------------------------------------

function autosize() {
  const box = $("message");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

async function start() {
  state.token = localStorage.getItem("chatq.token");
  state.user = state.token && userFromToken(state.token);
  if (!state.user) return showSignIn();
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("me").textContent = state.user;
  // The fragment is anyone's to write (a link someone sent): only an id goes into a request path.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("c");
  const isId = fromHash && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(fromHash);
  await Promise.all([selectConversation(isId ? fromHash : null), loadTasks()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("delete-me").addEventListener("click", () => deleteAccount().catch((error) => console.error(error)));
  $("delete-conversation").addEventListener("click", () => deleteConversation().catch((error) => console.error(error)));
  $("new-conversation").addEventListener("click", () => { closePanels(); selectConversation(null); });
  $("search-form").addEventListener("submit", (event) => search(event).catch((error) => console.error(error)));
  $("export").addEventListener("click", () => exportData().catch((error) => console.error(error)));
  $("open-menu").addEventListener("click", () => openPanel("menu"));
  $("open-tasks").addEventListener("click", () => openPanel("tasks"));
  $("close-menu").addEventListener("click", closePanels);
  $("close-tasks").addEventListener("click", closePanels);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closePanels(); });
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("input", autosize);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  start().catch((error) => console.error(error));
  setInterval(() => { if (state.token) refreshQueued(); }, QUEUE_REFRESH_MS);
});
