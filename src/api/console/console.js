// The heistd web console: plain JavaScript, no framework, no build step.
// It reads the admin API the way any client does. The admin token is asked
// for once per browser tab and kept in sessionStorage (never localStorage
// or a cookie), and sent as `Authorization: Bearer`; with no cookies there
// is nothing for another site to forge a request with. Text from the API is
// only ever set as textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "heistd.adminToken";
const POLL_MS = 2000;

// ---- The admin API ----------------------------------------------------

function adminToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// Asks for the admin token with the form at the top of the page; resolves
// with it, or rejects when the operator cancels.
let tokenWaiters = [];
function askForToken(reason) {
  const form = document.getElementById("token-form");
  document.getElementById("token-reason").textContent = reason;
  form.hidden = false;
  document.getElementById("token-input").focus();
  return new Promise((resolve, reject) => tokenWaiters.push({ resolve, reject }));
}

function settleTokenWaiters(token) {
  const waiters = tokenWaiters;
  tokenWaiters = [];
  document.getElementById("token-form").hidden = true;
  for (const waiter of waiters) {
    if (token) waiter.resolve(token);
    else waiter.reject(new Error("no admin token given"));
  }
}

// fetch() against the admin API. A 401 or 403 asks for the token (once per
// tab) and tries again with it; any other answer is returned as it is.
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = Object.assign({}, options.headers || {});
    const token = adminToken();
    if (token) headers["Authorization"] = "Bearer " + token;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    const refused = response.status === 401 || response.status === 403;
    if (!refused || attempt > 0) return response;
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    await askForToken(token ? "the token was refused; give the admin token" : "this needs the admin token");
  }
}

// GET path as JSON; null when the daemon has no such endpoint (404), so a
// daemon without a feature shows "not available" instead of an error.
async function getJson(path) {
  const response = await api(path);
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(await refusal(response));
  return response.json();
}

async function postJson(path, body) {
  const response = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) throw new Error(await refusal(response));
  return response.json().catch(() => ({}));
}

async function refusal(response) {
  const body = await response.json().catch(() => null);
  const detail = body && body.error ? body.error : response.statusText;
  return response.status + ": " + detail;
}

// ---- Small DOM helpers --------------------------------------------------

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell === undefined || cell === null ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function badge(text) {
  return element("span", text, "status status-" + String(text).replace(/[^a-z_]/g, ""));
}

function fillTable(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}

function time(text) {
  if (!text) return "";
  const date = new Date(text);
  return isNaN(date) ? text : date.toLocaleString();
}

function button(label, action) {
  const node = element("button", label);
  node.type = "button";
  node.addEventListener("click", () => run(action));
  return node;
}

function showError(message) {
  const node = document.getElementById("error");
  node.textContent = message || "";
  node.hidden = !message;
}

// Runs an action, showing its failure at the top instead of throwing.
async function run(action) {
  try {
    await action();
    showError(null);
  } catch (error) {
    showError(error.message);
  }
}

// ---- Views ---------------------------------------------------------------

async function refreshSessions() {
  const list = await getJson("/api/v1/sessions?limit=50");
  const sessions = list ? list.sessions : [];
  fillTable("sessions", sessions.map((session) => {
    const link = element("a", session.session_id);
    link.href = "#/session/" + encodeURIComponent(session.session_id);
    const turns = session.planned_turns ? session.num_turns + " / " + session.planned_turns : session.num_turns;
    return row([link, badge(session.status), turns, session.schedule, time(session.start_time),
      time(session.end_time), session.failure_reason]);
  }));
}

function refreshServices(status) {
  fillTable("services", status.services.map((service) => row([
    service.service, badge(service.state), time(service.since), badge(service.breaker),
    service.last_latency_ms == null ? "" : service.last_latency_ms.toFixed(1) + " ms",
    service.last_error,
  ])));
}

async function refreshSchedules(status) {
  const note = document.getElementById("schedules-note");
  const listed = await getJson("/api/v1/schedules");
  if (listed === null) {
    // A daemon without schedule control: show what the status says.
    note.textContent = "Pausing and triggering schedules is not available on this daemon.";
    fillTable("schedules", status.cluster.schedules.map((schedule) => row([
      schedule.name, time(schedule.next_slot), time(schedule.last_slot),
      badge(schedule.enabled ? "enabled" : "disabled"), "", "",
    ])));
    return;
  }
  note.textContent = "";
  fillTable("schedules", listed.schedules.map((schedule) => {
    const name = encodeURIComponent(schedule.name);
    const actions = element("span");
    if (schedule.paused) {
      actions.appendChild(button("Resume", () => scheduleAction(name, "resume", {})));
    } else {
      actions.appendChild(button("Pause", () =>
        scheduleAction(name, "pause", { note: "paused from the web console" })));
    }
    actions.appendChild(button("Trigger", () => scheduleAction(name, "trigger", {})));
    const who = schedule.paused_by ? " (" + schedule.paused_by + ", " + time(schedule.paused_at) + ")" : "";
    return row([schedule.name, time(schedule.next_slot), time(schedule.last_slot),
      badge(schedule.paused ? "paused" : "active"), (schedule.note || "") + who, actions]);
  }));
}

async function scheduleAction(name, action, body) {
  await postJson("/api/v1/schedules/" + name + "/" + action, body);
  await refreshAll();
}

function refreshCluster(status) {
  const cluster = status.cluster;
  const summary = cluster.backend === "postgres"
    ? "PostgreSQL cluster; this node is " + cluster.node_id + "; " + cluster.queued_runs + " runs queued."
    : "One node on SQLite: there is no cluster to show.";
  document.getElementById("cluster-summary").textContent = summary;
  const owned = {};
  for (const owner of cluster.session_owners) {
    owned[owner.owner_node] = (owned[owner.owner_node] || 0) + 1;
  }
  fillTable("nodes", cluster.nodes.map((node) => row([
    node.node_id, node.host, node.pid, time(node.started_at), time(node.last_heartbeat),
    badge(node.alive ? "up" : node.lost ? "down" : "stopped"), owned[node.node_id] || 0,
  ])));
}

async function refreshAll() {
  const status = await getJson("/api/v1/status");
  if (status) {
    document.getElementById("daemon-summary").textContent = "version " + status.version + ", " +
      status.running_sessions.length + " of " + status.max_concurrent_sessions + " sessions running";
    refreshServices(status);
    refreshCluster(status);
    await refreshSchedules(status);
  }
  await refreshSessions();
}

// ---- One session's transcript, growing live --------------------------------

// The session on screen and how it is followed: an event stream when the
// daemon has one, else polling. Replaced when another session is opened.
let follow = null;

function openSession(sessionId) {
  if (follow) follow.stop();
  document.getElementById("session-id").textContent = sessionId;
  document.getElementById("transcript").replaceChildren();
  follow = new Follow(sessionId);
  follow.start();
}

class Follow {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.seen = new Set();
    this.stopped = false;
    this.abort = new AbortController();
    this.lastEventId = null;
  }

  stop() {
    this.stopped = true;
    this.abort.abort();
  }

  // Shows what the store holds, then follows from the last turn shown
  // (the stream's event ids are turn ids), unless the session has ended.
  async start() {
    let ended = false;
    await run(async () => { ended = await this.poll(); });
    if (ended) return this.live("the session has ended");
    const shown = [...this.seen].map(Number).filter(Number.isFinite);
    if (shown.length) this.lastEventId = String(Math.max(...shown));
    this.stream().catch(() => this.fallBackToPolling("the live stream failed"));
  }

  // The events stream read with fetch() rather than EventSource, so the
  // bearer header can be sent when reads need the token, and a daemon
  // without the stream (404) is told apart from a broken connection.
  async stream() {
    const path = "/api/v1/sessions/" + encodeURIComponent(this.sessionId) + "/events";
    while (!this.stopped) {
      const headers = { Accept: "text/event-stream" };
      if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
      const response = await api(path, { headers, signal: this.abort.signal });
      if (response.status === 404 || !response.ok || !response.body) {
        return this.fallBackToPolling("live events are not available on this daemon");
      }
      this.live("following live events");
      const ended = await this.readEvents(response.body.getReader());
      if (ended) return this.live("the session has ended");
      await sleep(POLL_MS);
    }
  }

  // Reads server-sent events until the stream closes; true once `ended`.
  async readEvents(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.id) this.lastEventId = event.id;
        if (this.onEvent(event)) return true;
      }
    }
  }

  onEvent(event) {
    let data = {};
    try { data = event.data ? JSON.parse(event.data) : {}; } catch (_) { data = { message: event.data }; }
    if (event.type === "turn") this.addTurn(data, event.id);
    else if (event.type === "waiting") this.addNotice("waiting: " + (data.reason || "an outage"), "waiting");
    else if (event.type === "resumed") this.addNotice("resumed", "active");
    else if (event.type === "ended") {
      this.addNotice("ended " + (data.status || "") + (data.reason ? ": " + data.reason : ""), data.status, "ended");
      return true;
    }
    return false;
  }

  fallBackToPolling(why) {
    if (this.stopped || this.polling) return;
    this.polling = true;
    this.live(why + "; refreshing every " + POLL_MS / 1000 + " s");
    const tick = async () => {
      if (this.stopped) return;
      const ended = await this.poll().catch((error) => { showError(error.message); return false; });
      if (!ended) setTimeout(tick, POLL_MS);
      else this.live("the session has ended");
    };
    setTimeout(tick, POLL_MS);
  }

  // Reads the whole session once and adds the turns not shown yet; true
  // once the session has ended.
  async poll() {
    const detail = await getJson("/api/v1/sessions/" + encodeURIComponent(this.sessionId));
    if (detail === null) throw new Error("no session " + this.sessionId);
    for (const message of detail.messages) {
      const tools = detail.tool_usage.filter((tool) => tool.turn_id === message.turn_id)
        .map((tool) => ({ tool: tool.tool_name, outcome: tool.success ? "succeeded" : "failed" }));
      this.addTurn({ turn_id: message.turn_id, agent: message.agent_name, message: message.message,
        error: message.error, tool_calls: tools }, String(message.turn_id));
    }
    this.setStatus(detail.session.status);
    return detail.session.status !== "active" && detail.session.status !== "queued";
  }

  addTurn(turn, id) {
    const key = String(turn.turn_id !== undefined ? turn.turn_id : id);
    if (this.seen.has(key)) return;
    this.seen.add(key);
    const item = element("li", null, "turn");
    item.dataset.turn = key;
    item.appendChild(element("span", "#" + key, "muted"));
    item.appendChild(element("span", " " + (turn.agent || turn.agent_name || "?"), "agent"));
    if (turn.duration_ms !== undefined) item.appendChild(element("span", " " + turn.duration_ms + " ms", "muted"));
    item.appendChild(element("div", turn.error ? "error: " + turn.error : turn.message, "message"));
    const tools = (turn.tool_calls || []).map((call) =>
      (call.tool || call.tool_name) + " " + (call.outcome || (call.success ? "succeeded" : "failed")));
    if (tools.length) item.appendChild(element("div", "tools: " + tools.join(", "), "tools"));
    document.getElementById("transcript").appendChild(item);
  }

  addNotice(text, status, kind) {
    document.getElementById("transcript").appendChild(element("li", text, kind || "notice"));
    if (status) this.setStatus(status);
  }

  setStatus(status) {
    const node = document.getElementById("session-status");
    node.replaceChildren(badge(status));
  }

  live(text) {
    document.getElementById("session-live").textContent = text;
  }
}

function parseEvent(block) {
  const event = { type: "message", data: "", id: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") event.id = value;
  }
  event.data = data.join("\n");
  return event;
}

function sleep(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}

// ---- Navigation and start-up ------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const session = hash.match(/^#\/session\/(.+)$/);
  const view = session ? "session" : ({ "#/services": "services", "#/schedules": "schedules",
    "#/cluster": "cluster" })[hash] || "sessions";
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== "view-" + view;
  }
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("current", link.getAttribute("href") === hash);
  }
  if (session) openSession(decodeURIComponent(session[1]));
  else if (follow) { follow.stop(); follow = null; }
}

function start() {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    settleTokenWaiters(token);
  });
  document.getElementById("token-cancel").addEventListener("click", () => settleTokenWaiters(null));
  document.getElementById("start-run").addEventListener("click", () => run(async () => {
    const started = await postJson("/api/v1/runs", {});
    location.hash = "#/session/" + encodeURIComponent(started.session_id);
  }));
  window.addEventListener("hashchange", route);
  route();
  const tick = () => run(refreshAll).finally(() => setTimeout(tick, POLL_MS));
  tick();
}

start();
