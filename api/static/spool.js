// Spool's browser client: streams a generation with fetch, hands the application each
// event, and resumes by itself after a dropped connection, on the same replica or another.
//
// An ES module with no build step and no dependencies:
//
//   import { Spool, eventText } from "/static/spool.js";
//   const spool = new Spool({ apiKey });            // or { baseUrls: [a, b], apiKey }
//   const stream = spool.stream("/v1/chat/completions", {
//     model: "demo", messages: [{ role: "user", content: "Hi" }],
//   });
//   for await (const event of stream) output.textContent += eventText(event);
//
// The key travels in `Authorization: Bearer`, never in a URL. A second device follows with
// a read-only token instead: `spool.follow(id, { followToken })`.

const DEFAULT_RETRY = { baseMs: 250, maxMs: 5000, maxAttempts: 10 };
const DEFAULT_IDLE_TIMEOUT_MS = 60000; // Spool sends a keep-alive every 15 s by default
const MAX_LINE_CHARS = 16 * 1024 * 1024;
const RETRYABLE_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504]);
const TASK_END_EVENTS = new Set(["task.succeeded", "task.failed", "task.cancelled"]);
const RESPONSES_END_EVENTS = new Set([
  "response.completed", "response.failed", "response.incomplete", "error",
]);
const ANTHROPIC_EVENTS = new Set([
  "message_start", "content_block_start", "content_block_delta", "content_block_stop",
  "message_delta", "message_stop", "ping",
]);

/** A refusal by Spool (`status` and its JSON `body`), or a stream that could not go on. */
export class SpoolError extends Error {
  constructor(message, { status = 0, body = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "SpoolError";
    this.status = status;
    this.body = body;
  }
}

/**
 * Incremental Server-Sent Events parser, per the WHATWG HTML specification: `id`,
 * `event`, `data` (several lines joined by "\n"), `retry`, comments; LF, CR and CRLF line
 * ends, even split across chunks; UTF-8 split across chunks. `push(bytes)` returns the
 * events completed by those bytes; `end()` drops a final event that never got its blank
 * line, as the specification says.
 */
export class SSEParser {
  constructor() {
    this.decoder = new TextDecoder("utf-8");
    this.buffer = "";
    this.pendingCR = false;
    this.atStart = true;
    this.lastEventId = "";
    this.retry = null; // the last `retry:` value, in milliseconds
    this.resetEvent();
  }

  resetEvent() {
    this.data = [];
    this.type = "";
    this.ownId = null; // the id line of the event being read, if it has one
  }

  push(bytes) {
    return this.lines(this.decoder.decode(bytes, { stream: true }));
  }

  end() {
    const events = this.lines(this.decoder.decode());
    this.buffer = "";
    this.resetEvent();
    return events;
  }

  lines(text) {
    const events = [];
    if (!text) return events;
    if (this.atStart) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.atStart = false;
    }
    if (this.pendingCR && text.charCodeAt(0) === 10) text = text.slice(1); // a split CRLF
    this.pendingCR = false;
    // The buffer holds the start of a line: no line end before its own length.
    const all = this.buffer + text;
    let from = 0;
    for (let i = this.buffer.length; i < all.length; i++) {
      const c = all.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(all.slice(from, i), events);
      if (c === 13) {
        if (i + 1 < all.length) {
          if (all.charCodeAt(i + 1) === 10) i++;
        } else {
          this.pendingCR = true;
        }
      }
      from = i + 1;
    }
    this.buffer = all.slice(from);
    if (this.buffer.length > MAX_LINE_CHARS) throw new SpoolError("an SSE line is too long");
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data.length) {
        events.push({
          event: this.type || "message",
          data: this.data.join("\n"),
          ownId: this.ownId,
          lastEventId: this.lastEventId,
        });
      }
      this.resetEvent();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = this.ownId = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }
}

/** The surface a generation route speaks, from its path (null when it cannot tell). */
export function surfaceOfPath(path) {
  const route = path.split("?")[0];
  if (route.includes(":streamGenerateContent") || route.includes(":generateContent")) {
    return "gemini";
  }
  if (/\/v1\/tasks\/[^/]+\/events$/.test(route)) return "task";
  if (/(^|\/)(v1|v2|openai\/v1)\/(chat\/)?completions$/.test(route)) return "openai";
  if (/(^|\/)(openai\/)?v1\/responses(\/|$)/.test(route)) return "responses";
  if (/(^|\/)(anthropic\/)?v1\/messages$/.test(route)) return "anthropic";
  if (/(^|\/)api\/chat$/.test(route)) return "simple";
  return null;
}

function parseJSON(data) {
  if (data === "" || (data[0] !== "{" && data[0] !== "[")) return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

/** The surface of a stream whose route did not say (a follow), from one of its events. */
function sniffSurface(raw, json) {
  if (raw.event.startsWith("task.")) return "task";
  if (raw.event.startsWith("response.")) return "responses";
  if (ANTHROPIC_EVENTS.has(raw.event)) return "anthropic";
  if (raw.data === "[DONE]") return "openai";
  if (!json || typeof json !== "object") return null;
  if (json.object === "chat.completion.chunk" || json.object === "text_completion") {
    return "openai";
  }
  if ("candidates" in json || "responseId" in json) return "gemini";
  if ("done" in json) return "simple";
  return null;
}

/** Whether `event` is the last of its stream, on its surface. */
export function isEnd(event) {
  const json = event.json;
  switch (event.surface) {
    case "openai":
      return event.data === "[DONE]";
    case "anthropic":
      return event.event === "message_stop" || event.event === "error";
    case "simple":
      return json?.done === true;
    case "gemini":
      return Boolean(json?.error) || (json?.candidates ?? []).some((c) => c.finishReason);
    case "task":
      return TASK_END_EVENTS.has(event.event);
    case "responses":
      return RESPONSES_END_EVENTS.has(event.event);
    default:
      return event.data === "[DONE]" || TASK_END_EVENTS.has(event.event) ||
        event.event === "message_stop" || json?.done === true;
  }
}

/** The text an event adds to the answer (not reasoning, not tool calls), on any surface. */
export function eventText(event) {
  const json = event.json;
  if (!json || typeof json !== "object") return "";
  switch (event.surface) {
    case "openai": {
      const choice = json.choices?.[0];
      return choice?.delta?.content ?? choice?.text ?? "";
    }
    case "anthropic":
      return json.type === "content_block_delta" && json.delta?.type === "text_delta"
        ? json.delta.text : "";
    case "gemini":
      return (json.candidates?.[0]?.content?.parts ?? [])
        .filter((p) => typeof p.text === "string" && !p.thought)
        .map((p) => p.text).join("");
    case "simple":
      return typeof json.token === "string" ? json.token : "";
    case "responses":
      return json.type === "response.output_text.delta" ? json.delta ?? "" : "";
    default:
      return "";
  }
}

/** The answer's text in a finished stream's `/result` output, on any surface. */
export function resultText(result) {
  const out = result?.output;
  if (!out) return "";
  if (Array.isArray(out.choices)) {
    const choice = out.choices[0] ?? {};
    return choice.message?.content ?? choice.text ?? "";
  }
  if (Array.isArray(out.content)) {
    return out.content.filter((b) => b.type === "text").map((b) => b.text).join("");
  }
  if (Array.isArray(out.candidates)) {
    return (out.candidates[0]?.content?.parts ?? [])
      .filter((p) => typeof p.text === "string" && !p.thought).map((p) => p.text).join("");
  }
  if (typeof out.response === "string") return out.response;
  return "";
}

function randomKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted || ms <= 0) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

async function errorFrom(response, what) {
  const text = await response.text().catch(() => "");
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  const message =
    body?.error?.message ?? (typeof body?.error === "string" ? body.error : null) ??
    (typeof body === "string" && body ? body : response.statusText);
  return new SpoolError(`${what}: ${response.status} ${message}`, {
    status: response.status, body,
  });
}

/** An exception of the application's own `onEvent`: it ends the stream, not retried. */
class ApplicationError {
  constructor(error) {
    this.error = error;
  }
}

class Drop {
  constructor(reason) {
    this.reason = reason;
  }
}

/**
 * One stream being read: an async iterable of events, with `onEvent`, `onOpen`, `onDrop`
 * and `onEnd` callbacks. `done` settles when it ends (resolves with a summary, or rejects
 * with a `SpoolError` when it cannot go on). See `Spool.stream` and `Spool.follow`.
 */
export class SpoolStream {
  constructor(spool, plan, options = {}) {
    this.spool = spool;
    this.plan = plan; // { method, path, body } of the first request; tail: the resume route
    this.id = plan.streamId ?? null;
    this.surface = options.surface ?? plan.surface ?? null;
    this.followTokenValue = options.followToken ?? null;
    this.lastEventId = options.lastEventId ?? null;
    this.options = options;
    this.resumes = 0; // connections after the first
    this.events = 0;
    this.state = "connecting";
    this.retryMs = null; // from the server's `retry:` field
    this.baseIndex = 0;
    this.closed = new AbortController(); // close(): stop reading altogether
    this.connection = null; // the AbortController of the current request
    this.queue = [];
    this.waiters = [];
    this.buffering = !options.onEvent;
    this.done = this.run();
    this.done.catch(() => {}); // the application may only iterate; it sees the error there
  }

  /** The stream's route for resuming: `GET /v1/streams/{id}` (or a task's events). */
  tailPath() {
    return this.plan.tail ? this.plan.tail(this.id) : `/v1/streams/${this.id}`;
  }

  async run() {
    let failures = 0;
    let first = true;
    let reason = null;
    const retry = this.spool.retry;
    try {
      for (;;) {
        if (this.closed.signal.aborted) return this.finish("closed");
        if (!first) {
          failures++;
          if (failures > retry.maxAttempts) {
            throw new SpoolError(
              `the stream ${this.id} could not be resumed after ${retry.maxAttempts} attempts` +
              (reason ? ` (${reason})` : ""),
            );
          }
          const base = this.retryMs ?? retry.baseMs;
          const ceiling = Math.min(retry.maxMs, base * 2 ** (failures - 1));
          const delayMs = ceiling / 2 + Math.random() * ceiling / 2;
          this.baseIndex = (this.baseIndex + 1) % this.spool.baseUrls.length;
          this.state = "reconnecting";
          this.notify("onDrop", {
            reason, attempt: failures, delayMs, lastEventId: this.lastEventId,
            baseUrl: this.spool.baseUrls[this.baseIndex],
          });
          await sleep(delayMs, this.closed.signal);
          if (this.closed.signal.aborted) return this.finish("closed");
        }
        const outcome = await this.connect(first);
        first = false;
        if (outcome.end) return this.finish(outcome.end);
        if (outcome.progress) failures = 0;
        reason = outcome.reason;
      }
    } catch (error) {
      this.state = "failed";
      this.wake({ error });
      this.notify("onEnd", { state: "failed", error, id: this.id });
      throw error;
    }
  }

  finish(how) {
    this.state = how === "closed" ? "closed" : "ended";
    const summary = {
      state: this.state, how, id: this.id, lastEventId: this.lastEventId,
      resumes: this.resumes, events: this.events,
    };
    this.wake({ end: true });
    this.notify("onEnd", summary);
    return summary;
  }

  notify(name, value) {
    const callback = this.options[name];
    if (callback) callback(value, this);
  }

  /** One request: the first (a POST, or a follow's GET) or a resume. */
  async connect(first) {
    const spool = this.spool;
    const baseUrl = spool.baseUrls[this.baseIndex];
    const resuming = !first || this.plan.method === "GET";
    const headers = { Accept: "text/event-stream", ...spool.authHeaders(this.followTokenValue) };
    let url;
    let init;
    if (first && this.plan.method === "POST") {
      url = baseUrl + this.plan.path;
      init = {
        method: "POST",
        headers: { ...headers, "Content-Type": "application/json", ...this.plan.headers },
        body: JSON.stringify(this.plan.body),
      };
    } else {
      url = baseUrl + spool.withToken(this.tailPath(), this.followTokenValue);
      if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
      init = { method: "GET", headers };
    }
    const controller = new AbortController();
    this.connection = controller;
    const onClose = () => controller.abort(new Drop("closed"));
    this.closed.signal.addEventListener("abort", onClose);
    // A replica that takes the connection but never answers counts as a drop too.
    const idleMs = spool.idleTimeoutMs;
    const silent = idleMs > 0
      ? setTimeout(() => controller.abort(new Drop("no answer")), idleMs) : null;
    try {
      let response;
      try {
        response = await spool.fetch(url, { ...init, cache: "no-store", signal: controller.signal });
      } catch (error) {
        if (this.closed.signal.aborted) return { end: "closed" };
        if (!resuming) {
          // No stream id yet: nothing to resume, and a second POST would generate twice.
          throw new SpoolError(`could not start the stream: ${error.message}`, { cause: error });
        }
        const why = controller.signal.reason instanceof Drop
          ? controller.signal.reason.reason : `network error: ${error.message ?? error}`;
        return { reason: why };
      } finally {
        clearTimeout(silent);
      }
      const streamId = response.headers.get("X-Spool-Stream-Id");
      if (streamId && !this.id) this.id = streamId;
      if (response.status === 204) return { end: "nothing-left" };
      if (!response.ok) {
        const error = await errorFrom(response, resuming ? "resume refused" : "refused");
        if (resuming && RETRYABLE_STATUSES.has(response.status)) {
          const after = Number(response.headers.get("Retry-After"));
          if (after > 0) await sleep(after * 1000, this.closed.signal);
          return { reason: error.message };
        }
        throw error;
      }
      if (!(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
        throw new SpoolError(`expected an event stream, got ${response.headers.get("Content-Type")}`, {
          status: response.status,
        });
      }
      if (!this.id) throw new SpoolError("the response carries no X-Spool-Stream-Id header");
      this.state = "open";
      if (!first) this.resumes++;
      this.notify("onOpen", {
        id: this.id, baseUrl, resumed: !first, resumedFrom: first ? null : this.lastEventId,
        status: response.status,
      });
      return await this.read(response, controller);
    } finally {
      this.closed.signal.removeEventListener("abort", onClose);
      this.connection = null;
    }
  }

  async read(response, controller) {
    const parser = new SSEParser();
    const reader = response.body.getReader();
    const idleMs = this.spool.idleTimeoutMs;
    let idle = null;
    const arm = () => {
      clearTimeout(idle);
      if (idleMs > 0) idle = setTimeout(() => controller.abort(new Drop("idle")), idleMs);
    };
    let progress = false;
    let tailError = null;
    try {
      arm();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        const events = parser.push(value);
        if (parser.retry !== null) this.retryMs = parser.retry;
        for (const raw of events) {
          const json = parseJSON(raw.data);
          if (!this.surface) this.surface = sniffSurface(raw, json);
          if (raw.ownId === null && this.surface && this.surface !== "gemini") {
            // Every event of a stream carries its id: one without is this connection's
            // own error (the replica lost its storage), not the stream's. Resume instead.
            tailError = tailError ?? raw.data;
            continue;
          }
          const id = raw.ownId ?? (typeof json?.responseId === "string" ? json.responseId : null);
          if (id !== null) this.lastEventId = id || null; // an empty id forgets the last one
          progress = true;
          const event = {
            id: id ?? this.lastEventId, event: raw.event, data: raw.data, json,
            surface: this.surface, streamId: this.id,
          };
          this.events++;
          this.deliver(event);
          if (isEnd(event)) {
            await reader.cancel().catch(() => {});
            return { end: "end", progress };
          }
          if (this.closed.signal.aborted) return { end: "closed" };
        }
      }
      parser.end();
      return { progress, reason: tailError ? `the replica ended the tail: ${tailError}` : "cut" };
    } catch (error) {
      if (error instanceof ApplicationError) {
        controller.abort(new Drop("closed"));
        throw error.error;
      }
      if (this.closed.signal.aborted) return { end: "closed" };
      if (error instanceof SpoolError) throw error;
      const why = controller.signal.reason instanceof Drop
        ? controller.signal.reason.reason : `network error: ${error.message ?? error}`;
      return { progress, reason: why };
    } finally {
      clearTimeout(idle);
    }
  }

  deliver(event) {
    if (this.options.onEvent) {
      try {
        this.options.onEvent(event, this);
      } catch (error) {
        throw new ApplicationError(error);
      }
    }
    if (this.buffering) {
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve({ value: event, done: false });
      else this.queue.push(event);
    }
  }

  wake(outcome) {
    this.outcome = outcome;
    for (const waiter of this.waiters.splice(0)) {
      if (outcome.error) waiter.reject(outcome.error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator]() {
    this.buffering = true;
    return {
      next: () => {
        if (this.queue.length) return Promise.resolve({ value: this.queue.shift(), done: false });
        if (this.outcome?.error) return Promise.reject(this.outcome.error);
        if (this.outcome) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  /** Cut the current connection, as a network failure would: the stream resumes by itself
   * from the last event id (what the playground's "Drop connection" does). */
  drop(reason = "dropped by the application") {
    if (this.connection) this.connection.abort(new Drop(reason));
  }

  /** Stop reading (the generation goes on; `cancel()` stops it). */
  close() {
    this.closed.abort();
  }

  /** Cancel the generation (the owner's key only); the stream then ends with a cancelled
   * finish, which this stream still reads. */
  cancel() {
    if (!this.id) return Promise.reject(new SpoolError("the stream has not started yet"));
    return this.plan.cancelPath
      ? this.spool.request("POST", this.plan.cancelPath(this.id))
      : this.spool.cancel(this.id);
  }

  /** Mint a read-only follow token for this stream: `{token, url, expires_at}`. */
  followToken() {
    return this.plan.followTokenPath
      ? this.spool.request("POST", this.plan.followTokenPath(this.id))
      : this.spool.followToken(this.id);
  }

  /** The stream's status and assembled output (for a task: the task). */
  result() {
    const options = { followToken: this.followTokenValue };
    return this.plan.surface === "task"
      ? this.spool.task(this.id, options) : this.spool.result(this.id, options);
  }
}

/**
 * A client of one Spool deployment: `baseUrl` (default: this page's origin) or `baseUrls`
 * (replicas to resume on, in turn), and an `apiKey` (or none, to follow with tokens).
 * `retry`: `{ baseMs, maxMs, maxAttempts }` of the reconnection backoff (a server's
 * `retry:` field replaces `baseMs`); `idleTimeoutMs`: a connection silent this long (not
 * even a keep-alive) counts as dropped.
 */
export class Spool {
  constructor({
    baseUrl = "", baseUrls = null, apiKey = null, retry = {},
    idleTimeoutMs = DEFAULT_IDLE_TIMEOUT_MS, fetch: fetchImpl = null,
  } = {}) {
    const bases = baseUrls?.length ? baseUrls : [baseUrl];
    this.baseUrls = bases.map((b) => b.replace(/\/+$/, ""));
    this.apiKey = apiKey || null;
    this.retry = { ...DEFAULT_RETRY, ...retry };
    this.idleTimeoutMs = idleTimeoutMs;
    this.fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
  }

  authHeaders(followToken = null) {
    return this.apiKey && !followToken ? { Authorization: `Bearer ${this.apiKey}` } : {};
  }

  withToken(path, followToken) {
    if (!followToken) return path;
    return `${path}${path.includes("?") ? "&" : "?"}follow_token=${encodeURIComponent(followToken)}`;
  }

  /**
   * Start a generation on any streaming route (`/v1/chat/completions`, `/v1/completions`,
   * `/v1/messages`, `/v1beta/models/{m}:streamGenerateContent`, `/api/chat`) and read it,
   * resuming after drops. `stream: true` (and Gemini's `alt=sse`) are added when missing.
   * Options: `onEvent`, `onOpen`, `onDrop`, `onEnd`, `headers`, `surface`.
   */
  stream(path, body, options = {}) {
    const surface = options.surface ?? surfaceOfPath(path);
    let route = path;
    let payload = body;
    if (surface === "gemini") {
      if (!/[?&]alt=/.test(route)) route += `${route.includes("?") ? "&" : "?"}alt=sse`;
    } else if (body && typeof body === "object" && !("stream" in body)) {
      payload = { ...body, stream: true };
    }
    const plan = { method: "POST", path: route, body: payload, surface, headers: options.headers };
    return new SpoolStream(this, plan, options);
  }

  /** Follow an existing stream from its start (or after `lastEventId`), with this
   * client's key or a `followToken`. */
  follow(streamId, options = {}) {
    return new SpoolStream(this, { method: "GET", streamId }, options);
  }

  /** Follow a task's progress events (`GET /v1/tasks/{id}/events`). */
  followTask(taskId, options = {}) {
    const plan = {
      method: "GET", streamId: taskId, surface: "task",
      tail: (id) => `/v1/tasks/${id}/events`,
      cancelPath: (id) => `/v1/tasks/${id}/cancel`,
      followTokenPath: (id) => `/v1/tasks/${id}/follow-token`,
    };
    return new SpoolStream(this, plan, options);
  }

  /** A JSON request. A network error tries the next replica when the request is safe to
   * repeat: a GET, a cancel, or one with an `Idempotency-Key` header. */
  async request(method, path, { body, followToken = null, headers = {} } = {}) {
    const repeatable = method === "GET" || path.endsWith("/cancel") ||
      "Idempotency-Key" in headers;
    let lastError = null;
    for (const base of repeatable ? this.baseUrls : this.baseUrls.slice(0, 1)) {
      let response;
      try {
        response = await this.fetch(base + this.withToken(path, followToken), {
          method,
          headers: {
            Accept: "application/json",
            ...this.authHeaders(followToken),
            ...(body === undefined ? {} : { "Content-Type": "application/json" }),
            ...headers,
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
        });
      } catch (error) {
        lastError = error;
        continue;
      }
      if (!response.ok) throw await errorFrom(response, `${method} ${path}`);
      return response.status === 204 ? null : response.json();
    }
    throw new SpoolError(`${method} ${path}: ${lastError?.message ?? "no replica answered"}`, {
      cause: lastError,
    });
  }

  cancel(streamId) {
    return this.request("POST", `/v1/streams/${streamId}/cancel`);
  }

  followToken(streamId) {
    return this.request("POST", `/v1/streams/${streamId}/follow-token`);
  }

  result(streamId, { followToken = null } = {}) {
    return this.request("GET", `/v1/streams/${streamId}/result`, { followToken });
  }

  models() {
    return this.request("GET", "/v1/models");
  }

  /** Submit an asset task; its `Idempotency-Key` makes a retry on another replica safe. */
  createTask(spec, { idempotencyKey = randomKey() } = {}) {
    return this.request("POST", "/v1/tasks", {
      body: spec, headers: { "Idempotency-Key": idempotencyKey },
    });
  }

  task(taskId, { followToken = null } = {}) {
    return this.request("GET", `/v1/tasks/${taskId}`, { followToken });
  }

  cancelTask(taskId) {
    return this.request("POST", `/v1/tasks/${taskId}/cancel`);
  }

  /** A task output's bytes as a Blob (fetched with the key, so no key goes in a URL). */
  async output(url, { followToken = null } = {}) {
    // Spool's own URLs are relative (unless `public_base_url` is set); any other is an
    // upstream's copy, which gets neither the key nor the token.
    const own = !/^https?:/.test(url) || this.baseUrls.some((b) => url.startsWith(`${b}/`));
    const target = /^https?:/.test(url) ? url : this.baseUrls[0] + url;
    const response = await this.fetch(own ? this.withToken(target, followToken) : target, {
      headers: own ? this.authHeaders(followToken) : {},
      cache: "no-store",
    });
    if (!response.ok) throw await errorFrom(response, `GET ${url}`);
    return response.blob();
  }
}
