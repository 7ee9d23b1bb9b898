// The playground page: a stream on any surface through spool.js (stop, drop and resume,
// follow from a second tab) and an asset task with its progress and output.

import { Spool, eventText, resultText } from "/static/spool.js";

const KEY_STORAGE = "spool.apiKey";
const MAX_LOG_ITEMS = 400;
const $ = (id) => document.getElementById(id);

const SURFACES = {
  "openai-chat": (model, text) => [
    "/v1/chat/completions", { model, messages: [{ role: "user", content: text }] },
  ],
  "openai-completions": (model, text) => ["/v1/completions", { model, prompt: text }],
  anthropic: (model, text) => [
    "/v1/messages", { model, max_tokens: 1024, messages: [{ role: "user", content: text }] },
  ],
  gemini: (model, text) => [
    `/v1beta/models/${encodeURIComponent(model)}:streamGenerateContent`,
    { contents: [{ role: "user", parts: [{ text }] }] },
  ],
  simple: (model, text) => ["/api/chat", { message: text, model }],
};

let current = null; // the stream shown
let currentTask = null;

function client() {
  return new Spool({ apiKey: sessionStorage.getItem(KEY_STORAGE) });
}

function setStatus(element, text, kind = "") {
  element.textContent = text;
  element.className = `status ${kind}`.trim();
}

function setState(state) {
  const element = $("stream-state");
  element.textContent = state;
  element.dataset.state = state;
}

function log(text) {
  const list = $("log");
  const item = document.createElement("li");
  item.textContent = text;
  list.append(item);
  while (list.childElementCount > MAX_LOG_ITEMS) list.firstElementChild.remove();
}

// -- the key and the models --------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const models = await client().models();
    const chosen = select.value || "demo";
    select.replaceChildren(
      ...models.data.map((m) => new Option(m.id, m.id, false, m.id === chosen)),
    );
    setStatus($("key-status"), `${models.data.length} models`, "ok");
  } catch (error) {
    const hint = error.status === 401
      ? "enter the API key (`make run` prints it: export SPOOL_API_KEY=…)" : error.message;
    setStatus($("key-status"), hint, "bad");
  }
}

function useKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
}

// -- a stream ----------------------------------------------------------------------------

function resetStream() {
  $("output").replaceChildren();
  $("log").replaceChildren();
  $("stream-id").textContent = "–";
  $("event-count").textContent = "0";
  $("last-id").textContent = "–";
  $("resume-status").dataset.resumes = "0";
  $("follow-href").hidden = true;
  setStatus($("resume-status"), "");
  setStatus($("verdict"), "");
}

function handlers(followToken = null) {
  return {
    followToken,
    onOpen(info, stream) {
      $("stream-id").textContent = info.id;
      setState("open");
      $("follow-link").disabled = followToken !== null;
      $("drop").disabled = false;
      $("stop").disabled = followToken !== null;
      if (info.resumed) {
        const from = info.resumedFrom ?? "the start";
        const where = info.baseUrl || location.origin;
        const status = $("resume-status");
        status.dataset.resumes = String(stream.resumes);
        status.dataset.resumedFrom = info.resumedFrom ?? "";
        setStatus(status, `Resumed from id ${from} on ${where} (resume ${stream.resumes}).`);
        log(`— resumed after id ${from} on ${where}`);
      } else {
        log(`— open on ${info.baseUrl || location.origin}`);
      }
    },
    onDrop(info) {
      setState("reconnecting");
      setStatus(
        $("resume-status"),
        `Connection lost (${info.reason}) after id ${info.lastEventId ?? "–"}; ` +
          `reconnecting in ${Math.round(info.delayMs)} ms…`,
      );
      log(`— dropped: ${info.reason}`);
    },
    onEvent(event, stream) {
      const text = eventText(event);
      if (text) $("output").append(text);
      $("event-count").textContent = String(stream.events);
      $("last-id").textContent = stream.lastEventId ?? "–";
      log(`${event.id ?? ""} ${event.event === "message" ? "" : `${event.event} `}${event.data}`);
    },
    onEnd(summary, stream) {
      setState(summary.state);
      $("stop").disabled = true;
      $("drop").disabled = true;
      $("send").disabled = followToken !== null;
      if (summary.error) {
        setStatus($("verdict"), summary.error.message, "bad");
        return;
      }
      if (summary.state === "ended") checkResult(stream);
    },
  };
}

async function checkResult(stream) {
  try {
    const result = await stream.result();
    const expected = resultText(result);
    const shown = $("output").textContent;
    const verdict = $("verdict");
    verdict.dataset.status = result.status;
    verdict.dataset.match = String(expected === shown);
    if (expected === shown) {
      setStatus(verdict, `${result.status}: identical to /result (${shown.length} characters).`, "ok");
    } else {
      setStatus(verdict, `${result.status}: differs from /result.`, "bad");
    }
  } catch (error) {
    setStatus($("verdict"), `result: ${error.message}`, "bad");
  }
}

function send() {
  if (current) current.close();
  resetStream();
  const [path, body] = SURFACES[$("surface").value]($("model").value, $("message").value);
  setState("connecting");
  $("send").disabled = true;
  $("stop").disabled = true; // until the stream has an id
  $("drop").disabled = true;
  current = client().stream(path, body, handlers());
}

async function stop() {
  if (!current) return;
  $("stop").disabled = true;
  try {
    await current.cancel();
    log("— cancel requested");
  } catch (error) {
    setStatus($("verdict"), `cancel: ${error.message}`, "bad");
  }
}

function drop() {
  if (current) current.drop("dropped from the playground");
}

async function followLink() {
  if (!current?.id) return;
  try {
    const minted = await current.followToken();
    const link = $("follow-href");
    const hash = new URLSearchParams({ follow: current.id, token: minted.token });
    link.href = `${location.origin}/playground#${hash}`;
    link.hidden = false;
    link.textContent = "open in a second tab";
  } catch (error) {
    setStatus($("verdict"), `follow token: ${error.message}`, "bad");
  }
}

/** The page opened from a follow link: read-only, with the token from the fragment (never
 * sent to a server as part of the page's URL). */
function startFollowing(params) {
  const id = params.get("follow");
  const token = params.get("token");
  $("follow-panel").hidden = false;
  $("follow-id").textContent = id;
  for (const hidden of ["key-panel", "compose", "task-panel"]) $(hidden).hidden = true;
  for (const button of ["send", "stop", "drop", "follow-link"]) $(button).hidden = true;
  $("message").hidden = true;
  resetStream();
  setState("connecting");
  $("drop").hidden = false;
  current = new Spool().follow(id, handlers(token));
}

// -- an asset task -----------------------------------------------------------------------

function setTask(status, message = "") {
  const element = $("task-status");
  element.textContent = status;
  element.dataset.status = status;
  $("task-message").textContent = message;
}

async function showOutput(spool, output) {
  const blob = await spool.output(output.url);
  const url = URL.createObjectURL(blob);
  const type = output.media_type ?? blob.type;
  let element;
  if (type.startsWith("image/")) {
    element = new Image();
    element.alt = `task output ${output.index}`;
  } else if (type.startsWith("audio/")) {
    element = document.createElement("audio");
    element.controls = true;
  } else if (type.startsWith("video/")) {
    element = document.createElement("video");
    element.controls = true;
    element.loop = true;
  } else {
    element = document.createElement("a");
    element.href = url;
    element.download = `output-${output.index}`;
    element.textContent = `download (${type})`;
  }
  element.dataset.mediaType = type;
  if (!(element instanceof HTMLAnchorElement)) element.src = url;
  $("task-output").append(element);
}

async function runTask() {
  const spool = client();
  $("task-output").replaceChildren();
  $("task-progress").value = 0;
  setTask("submitting");
  $("task-run").disabled = true;
  const input = { prompt: $("task-prompt").value };
  const seconds = Number($("task-duration").value);
  if ($("task-duration").value !== "" && Number.isFinite(seconds)) input.duration_s = seconds;
  try {
    const task = await spool.createTask({
      kind: $("task-kind").value, model: $("task-model").value, input,
    });
    setTask(task.status);
    $("task-cancel").disabled = false;
    currentTask = spool.followTask(task.id, {
      onEvent(event) {
        const body = event.json ?? {};
        if (event.event === "task.progress") {
          $("task-progress").value = body.progress;
          setTask("running", body.message ?? "");
        } else if (event.event === "task.started") {
          setTask("running");
        } else if (event.event === "task.succeeded") {
          $("task-progress").value = 1;
          setTask("succeeded");
          for (const output of body.outputs ?? []) {
            showOutput(spool, output).catch((e) => setTask("succeeded", e.message));
          }
        } else if (event.event === "task.failed") {
          setTask("failed", body.error?.message ?? "");
        } else if (event.event === "task.cancelled") {
          setTask("cancelled");
        }
      },
      onEnd(summary) {
        $("task-run").disabled = false;
        $("task-cancel").disabled = true;
        if (summary.error) setTask("failed", summary.error.message);
      },
    });
  } catch (error) {
    setTask("failed", error.message);
    $("task-run").disabled = false;
  }
}

async function cancelTask() {
  if (!currentTask) return;
  $("task-cancel").disabled = true;
  try {
    await currentTask.cancel();
  } catch (error) {
    setTask("failed", `cancel: ${error.message}`);
  }
}

// -- wiring ------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  useKey();
});
$("load-models").addEventListener("click", loadModels);
$("send").addEventListener("click", send);
$("stop").addEventListener("click", stop);
$("drop").addEventListener("click", drop);
$("follow-link").addEventListener("click", followLink);
$("task-run").addEventListener("click", runTask);
$("task-cancel").addEventListener("click", cancelTask);

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("follow")) {
  startFollowing(fragment);
} else {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  loadModels();
}
document.body.dataset.ready = "true";
