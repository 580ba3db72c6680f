// chatq's chat page: plain JavaScript, no build step. Everything it shows comes from the API, so a
// reload (or a different web node behind the load balancer) restores it all.
"use strict";

const $ = (id) => document.getElementById(id);
const WAIT_SECONDS = 25;
const state = {
  token: null, user: null, conversationId: null, items: new Map(), waiting: new Set(),
  drafts: new Map(),  // message id -> {attempt, text}: a reply still being streamed by the model
  stream: null,       // the AbortController of the conversation's event stream
  sending: null,      // the promise of the last send: sends go in order
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

function signOut() {
  localStorage.removeItem("chatq.token");
  state.token = null;
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
    button.addEventListener("click", () => selectConversation(conversation.id));
    item.append(button);
    list.append(item);
  }
}

async function selectConversation(conversationId) {
  if (state.stream) state.stream.abort();
  state.conversationId = conversationId;
  state.items = new Map();
  state.drafts = new Map();
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
      if (error.status === 404) return selectConversation(null);
      throw error;
    }
    render();
    for (const item of state.items.values()) {
      if (item.role === "user" && isPending(item)) waitForReply(item.id);
    }
  }
  await loadConversations();
  if (conversationId) followEvents(conversationId);
  $("message").focus();
}

// --- Messages ------------------------------------------------------------------------------------

const isPending = (message) => message.status === "queued" || message.status === "processing";

function remember(message) {
  state.items.set(message.id, message);
  if (message.reply) {
    state.items.set(message.reply.id, message.reply);
    state.drafts.delete(message.id);
  }
  if (message.reply_to) state.drafts.delete(message.reply_to);
}

function render() {
  const list = $("messages");
  list.replaceChildren();
  const items = [...state.items.values()].sort((a, b) => a.seq - b.seq);
  $("empty").hidden = items.length > 0;
  for (const message of items) {
    const bubble = document.createElement("li");
    bubble.className = `message ${message.role}`;
    bubble.dataset.id = message.id;
    bubble.dataset.seq = message.seq;
    bubble.textContent = message.content;
    list.append(bubble);
    if (message.role !== "user") continue;
    if (isPending(message)) {
      const status = document.createElement("li");
      status.className = "status pending";
      status.textContent = message.status === "queued" ? "Queued…" : "Thinking…";
      list.append(status);
      const draft = state.drafts.get(message.id);
      if (!message.reply && draft) {
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
    }
  }
  list.scrollTop = list.scrollHeight;
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
        await loadTasks();
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
    alert(`Your message was not sent: ${error.message}`);
  }
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
    const draft = state.drafts.get(data.message_id);
    if (draft && draft.attempt === data.attempt) {
      draft.text += data.text;
    } else if (data.index === 0) {  // joined mid-reply: keep the typing dots rather than show a torn text
      state.drafts.set(data.message_id, { attempt: data.attempt, text: data.text });
    } else {
      return;
    }
  } else {
    remember(data);
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
  $("sign-out").addEventListener("click", signOut);
  $("new-conversation").addEventListener("click", () => selectConversation(null));
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("input", autosize);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  start().catch((error) => console.error(error));
});
