// The labelling page (/projects/{pid}/label): shows the next item of a project and sends the labeller's
// judgement: pairwise (A better / B better / tie / both bad), a ranking of k responses, or 1..N ratings per
// response and aspect, each with an optional or required reason. Everything works from the keyboard.
//
// No vote is lost: an answer gets a client_id (the server's idempotency key) when the labeller commits it,
// is kept in localStorage until the server acknowledges it (201, or 200 for a repeat), and is sent again
// with the same client_id after a network error or a 5xx, also after a reload (a 429 after the server's
// Retry-After). The page moves on to the next item only after the acknowledgement. A 4xx is final: the
// answer is dropped from storage and the reason shown. After DISCARD_AFTER failed sends the labeller may
// also discard the answer, so a server that keeps failing on one answer never leaves them stuck. It leaves
// out editing an answer once it has been sent.

import { ApiError, api, refreshCsrf, requireLogin } from "./api.js";
import { clearMessage, el, kbd, progressText, renderUserBar, showFatal, showMessage, showSessionEnded } from "./page.js";

const projectId = decodeURIComponent(location.pathname.split("/")[2] || "");

const PAIRWISE_CHOICES = [
  { choice: "A", label: "A better", keys: ["1", "a"] },
  { choice: "B", label: "B better", keys: ["2", "b"] },
  { choice: "tie", label: "Tie", keys: ["3", "t"] },
  { choice: "both_bad", label: "Both bad", keys: ["4", "x"] },
];
const PAIRWISE_KEYS = new Map(PAIRWISE_CHOICES.flatMap((c) => c.keys.map((key) => [key, c.choice])));
const RETRY_DELAYS_S = [1, 2, 4, 8, 15]; // then every 15 s, for as long as the page is open
const DISCARD_AFTER = 5; // failed sends of one answer before "Discard this answer" is offered
const MAX_RETRY_AFTER_S = 600; // a Retry-After beyond this is read as this (the labeller can retry now)

const state = {
  me: null,
  project: null,
  item: null, // the item on screen, as /next returned it
  ranking: [], // ranking: display slots, best first
  // rating: one Map aspect -> value per display slot. A Map, not an object: an aspect may be named
  // "__proto__", "constructor" or "toString", which a plain object would swallow or already "have".
  ratings: [],
  pending: null, // {item_id, body}: sent, not acknowledged yet; body.client_id stays the same on retries
  busy: false, // a send or a /next load is under way: buttons and shortcuts do nothing
  failures: 0, // consecutive retryable failures, for the back-off
  retryTimer: null,
  csrfRefreshed: false,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- pending answer, kept across reloads

function pendingKey() {
  return `rlxf.pending.${state.me.user.id}.${projectId}`;
}

function storePending() {
  try {
    if (state.pending) localStorage.setItem(pendingKey(), JSON.stringify(state.pending));
    else localStorage.removeItem(pendingKey());
  } catch (error) {
    // Storage can be full or disabled (private mode); the answer is still kept on screen and retried.
  }
}

function loadStoredPending() {
  try {
    const text = localStorage.getItem(pendingKey());
    return text ? JSON.parse(text) : null;
  } catch (error) {
    return null;
  }
}

/** A random UUID v4. crypto.randomUUID needs a secure context; a phone on http://LAN-IP does not have one. */
function newClientId() {
  if (window.isSecureContext && crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// ---------------------------------------------------------------- page state helpers

function setBusy(busy) {
  state.busy = busy;
  $("item").classList.toggle("locked", busy);
  for (const control of $("item").querySelectorAll("button, input")) control.disabled = busy;
  $("reason").readOnly = busy;
}

function setProgress(progress) {
  if (!progress) return;
  $("progress-text").textContent = progressText(progress);
  $("progress-bar").max = Math.max(progress.total, 1);
  $("progress-bar").value = progress.done;
}

function clearRetry() {
  if (state.retryTimer) clearTimeout(state.retryTimer);
  state.retryTimer = null;
}

/**
 * Runs `action` again after a growing delay (or the server's Retry-After), with a "Retry now" button beside
 * the message and any `extra` buttons after it.
 */
function scheduleRetry(action, text, retryAfter = null, ...extra) {
  clearRetry();
  const backoff = RETRY_DELAYS_S[Math.min(state.failures, RETRY_DELAYS_S.length - 1)];
  const delay = retryAfter !== null ? Math.min(Math.max(retryAfter, 1), MAX_RETRY_AFTER_S) : backoff;
  state.failures += 1;
  const retryNow = el(
    "button",
    {
      type: "button",
      class: "button small",
      onclick: (event) => {
        event.currentTarget.disabled = true; // one resend at a time
        clearRetry();
        action();
      },
    },
    "Retry now",
  );
  showMessage(`${text} Trying again in ${delay} s.`, "warning", retryNow, ...extra);
  state.retryTimer = setTimeout(() => {
    state.retryTimer = null;
    action();
  }, delay * 1000);
}

function sessionEnded() {
  showSessionEnded(
    "Your session has ended. Log in again to go on; an unsaved answer is kept in this browser and sent when you come back.",
  );
}

// ---------------------------------------------------------------- loading items

async function loadNext() {
  clearRetry();
  setBusy(true);
  let response;
  try {
    response = await api("GET", `/api/projects/${encodeURIComponent(projectId)}/next`);
  } catch (error) {
    if (error instanceof ApiError && error.retryable) {
      scheduleRetry(loadNext, `Could not load the next item: ${error.message}`, error.retryAfter);
    } else if (error instanceof ApiError && error.status === 401) {
      sessionEnded();
    } else {
      showFatal(error);
    }
    return;
  }
  state.failures = 0;
  if (response.status === 204) {
    showDone();
  } else {
    showItem(response.data);
  }
}

function showDone() {
  state.item = null;
  $("item").hidden = true;
  $("done").hidden = false;
  $("done").querySelector("a").focus();
}

function showItem(item) {
  state.item = item;
  state.ranking = [];
  const slots = [...item.responses].sort((a, b) => a.slot - b.slot);
  state.ratings = slots.map(() => new Map());
  $("done").hidden = true;
  $("item").hidden = false;
  $("prompt-text").textContent = item.prompt;
  $("reason").value = "";
  setProgress(item.progress);
  const kind = state.project.kind;
  $("responses").className = `responses ${kind}`;
  $("responses").replaceChildren(...slots.map((response) => responseCard(response, kind)));
  renderActions(slots);
  setBusy(false);
  if (kind === "rating") focusRatingGroup(0);
  else if (document.activeElement && !document.activeElement.isConnected) document.body.focus();
  window.scrollTo({ top: 0 });
}

// ---------------------------------------------------------------- rendering per kind

function slotName(slot, kind) {
  return kind === "pairwise" ? "AB"[slot] : String(slot + 1);
}

function responseCard(response, kind) {
  const name = slotName(response.slot, kind);
  const card = el(
    "article",
    { class: "response card", "data-slot": response.slot, "aria-label": `Response ${name}` },
    el("div", { class: "box-label" }, `Response ${name}`),
    el("div", { class: "text response-text", text: response.text }),
  );
  if (kind === "rating") {
    state.project.aspects.forEach((aspect, index) => card.append(ratingGroup(response.slot, aspect, index)));
  }
  return card;
}

function ratingGroup(slot, aspect, aspectIndex) {
  const scale = state.project.scale;
  const legend = el("legend", { text: `${aspect} (1–${scale})` });
  const attrs = { class: "rating", "data-slot": slot, "data-aspect": aspect };
  if (scale > 10) {
    // Too many values for a row of buttons and one-digit keys: a number box (Enter in it submits).
    const input = el("input", {
      type: "number",
      class: "rating-number",
      min: 1,
      max: scale,
      step: 1,
      inputmode: "numeric",
      "aria-label": `${aspect}, 1 to ${scale}`,
      oninput: (event) => {
        const value = Number(event.target.value);
        if (Number.isInteger(value) && value >= 1 && value <= scale) state.ratings[slot].set(aspect, value);
        else state.ratings[slot].delete(aspect);
      },
    });
    return el("fieldset", attrs, legend, input);
  }
  const name = `rating-${slot}-${aspectIndex}`;
  const options = [];
  for (let value = 1; value <= scale; value += 1) {
    options.push(
      el(
        "label",
        {},
        el("input", {
          type: "radio",
          name,
          value,
          "aria-label": `${aspect}: ${value} of ${scale}`,
          onchange: () => {
            state.ratings[slot].set(aspect, value);
          },
        }),
        el("span", { "aria-hidden": "true", text: String(value) }),
      ),
    );
  }
  return el("fieldset", attrs, legend, el("div", { class: "scale" }, options));
}

function actionButton(label, keys, onclick, extra = {}) {
  return el(
    "button",
    { type: "button", class: "button", "aria-keyshortcuts": keys.join(" "), onclick, ...extra },
    el("span", { text: label }),
    keys.flatMap((key, i) => (i ? [" / ", kbd(keyCap(key))] : [kbd(keyCap(key))])),
  );
}

function keyCap(key) {
  return { Backspace: "⌫", Enter: "Enter" }[key] || key;
}

function renderActions(slots) {
  const kind = state.project.kind;
  const actions = $("actions");
  $("ranking-order").hidden = kind !== "ranking";
  if (kind === "pairwise") {
    actions.replaceChildren(
      ...PAIRWISE_CHOICES.map((c) =>
        actionButton(c.label, c.keys, () => submitPairwise(c.choice), { "data-choice": c.choice }),
      ),
    );
  } else if (kind === "ranking") {
    actions.replaceChildren(
      ...slots.map((r) =>
        actionButton(`Response ${r.slot + 1} next`, r.slot < 9 ? [String(r.slot + 1)] : [], () => addRank(r.slot), {
          class: "button secondary",
          "data-slot": r.slot,
        }),
      ),
      actionButton("Undo", ["Backspace"], undoRank, { class: "button secondary", id: "undo" }),
      actionButton("Submit", ["Enter"], submitRanking, { id: "submit" }),
    );
    renderRanking();
  } else {
    actions.replaceChildren(actionButton("Submit", ["Enter"], submitRating, { id: "submit" }));
  }
}

function renderRanking() {
  const total = state.item.responses.length;
  const order = state.ranking.map((slot) => slot + 1).join(" › ");
  $("ranking-order").textContent = state.ranking.length
    ? `Your ranking, best first: ${order}${state.ranking.length < total ? " › …" : ""}`
    : "Press the response numbers from best to worst.";
  for (const card of $("responses").children) {
    const slot = Number(card.dataset.slot);
    const rank = state.ranking.indexOf(slot);
    card.classList.toggle("chosen", rank >= 0);
    card.querySelector(".rank-badge")?.remove();
    if (rank >= 0) card.append(el("span", { class: "rank-badge", text: `#${rank + 1}` }));
  }
  for (const button of $("actions").querySelectorAll("button[data-slot]")) {
    button.setAttribute("aria-pressed", String(state.ranking.includes(Number(button.dataset.slot))));
  }
}

// ---------------------------------------------------------------- the labeller's actions

function addRank(slot) {
  if (state.busy || state.ranking.includes(slot)) return;
  if (slot < 0 || slot >= state.item.responses.length) return;
  state.ranking.push(slot);
  renderRanking();
}

function undoRank() {
  if (state.busy) return;
  state.ranking.pop();
  renderRanking();
}

function submitPairwise(choice) {
  for (const button of $("actions").querySelectorAll("button[data-choice]")) {
    button.setAttribute("aria-pressed", String(button.dataset.choice === choice));
  }
  commit({ choice });
}

function submitRanking() {
  const total = state.item.responses.length;
  // With one response left its place is known: Enter completes the ranking.
  if (state.ranking.length === total - 1) {
    const last = [...Array(total).keys()].find((slot) => !state.ranking.includes(slot));
    state.ranking.push(last);
    renderRanking();
  }
  if (state.ranking.length !== total) {
    showMessage(`Rank every response first (${state.ranking.length} of ${total} placed).`, "warning");
    return;
  }
  commit({ ranking: [...state.ranking] });
}

function ratingGroups() {
  return [...$("responses").querySelectorAll("fieldset.rating")];
}

function groupValue(group) {
  return state.ratings[Number(group.dataset.slot)].get(group.dataset.aspect);
}

function focusRatingGroup(index) {
  const group = ratingGroups()[index];
  if (!group) {
    $("submit")?.focus();
    return;
  }
  (group.querySelector("input:checked") || group.querySelector("input")).focus();
}

/** A digit typed while rating: sets the focused group (or the first unset one), then moves to the next. */
function rateWithKey(value) {
  const groups = ratingGroups();
  let index = groups.findIndex((group) => group.contains(document.activeElement));
  if (index < 0) index = groups.findIndex((group) => groupValue(group) === undefined);
  if (index < 0) return;
  const input = groups[index].querySelector(`input[value="${value}"]`);
  input.checked = true;
  input.dispatchEvent(new Event("change"));
  focusRatingGroup(index + 1);
}

function submitRating() {
  const missing = ratingGroups().filter((group) => groupValue(group) === undefined);
  if (missing.length) {
    const first = missing[0];
    showMessage(
      `Rate every response on every aspect (missing: response ${Number(first.dataset.slot) + 1}, ${first.dataset.aspect}).`,
      "warning",
    );
    focusRatingGroup(ratingGroups().indexOf(first));
    return;
  }
  // Object.fromEntries defines own properties, so "__proto__" becomes a key that JSON.stringify sends
  // (assigning obj["__proto__"] = 4 would instead try to set the object's prototype and be dropped).
  commit({ ratings: state.ratings.map((ratings) => Object.fromEntries(ratings)) });
}

/** Freezes the answer on screen and sends it; the page moves on once the server has committed it. */
function commit(answer) {
  if (state.busy || !state.item) return;
  const reason = $("reason").value.trim();
  if (state.project.ask_reason === "required" && !reason) {
    showMessage("This project asks for a reason: write one (r), then choose again.", "warning");
    $("reason").focus();
    return;
  }
  clearMessage();
  const body = { client_id: newClientId(), ...answer };
  if (state.project.ask_reason !== "off" && reason) body.reason = reason;
  state.pending = { item_id: state.item.item_id, body };
  storePending();
  state.failures = 0;
  state.csrfRefreshed = false;
  sendPending();
}

async function sendPending() {
  clearRetry();
  setBusy(true);
  const sent = state.pending;
  const { item_id: itemId, body } = sent;
  const url = `/api/projects/${encodeURIComponent(projectId)}/items/${encodeURIComponent(itemId)}/answers`;
  let response;
  try {
    response = await api("POST", url, body);
  } catch (error) {
    // Discarded while this request was under way: the page has moved on already.
    if (state.pending === sent) handleSendError(error);
    return;
  }
  if (state.pending !== sent) return;
  const hadTrouble = state.failures > 0;
  state.pending = null;
  storePending();
  state.failures = 0;
  setProgress(response.data && response.data.progress);
  if (hadTrouble) showMessage("Your answer was saved.", "ok");
  await loadNext();
}

function handleSendError(error) {
  if (!(error instanceof ApiError)) {
    showFatal(error);
    return;
  }
  if (error.retryable) {
    // state.failures counts the failed sends before this one.
    const offerDiscard = state.failures + 1 >= DISCARD_AFTER;
    const discard = el(
      "button",
      { type: "button", class: "button small secondary", id: "discard", onclick: discardPending },
      "Discard this answer",
    );
    scheduleRetry(
      sendPending,
      `Your answer is not saved yet (${error.message}); it stays here and is sent again.` +
        (offerDiscard ? ` It failed ${state.failures + 1} times: you may discard it and go on.` : ""),
      error.retryAfter,
      ...(offerDiscard ? [discard] : []),
    );
    return;
  }
  if (error.status === 401) {
    sessionEnded();
    return;
  }
  if (error.status === 403 && !state.csrfRefreshed) {
    // The session may have been renewed (another tab logged in again): fetch the CSRF token and resend.
    state.csrfRefreshed = true;
    refreshCsrf().then(sendPending, (refreshError) => handleSendError(refreshError));
    return;
  }
  // The server refused this answer for good (409, 422, 403, 404 ...): it will not be stored as sent.
  const sentForItem = state.pending.item_id;
  state.pending = null;
  storePending();
  if (error.status === 409) {
    // Normally "you have already answered this item" (e.g. from another tab): that earlier answer stands.
    showMessage(`This answer was not stored: ${error.message}.`, "warning");
    loadNext();
  } else if (error.status === 422 && state.item && state.item.item_id === sentForItem) {
    showMessage(`The server did not accept this answer: ${error.message}`, "error");
    setBusy(false);
  } else {
    showMessage(`The answer was refused (${error.status}): ${error.message}`, "error");
    loadNext();
  }
}

/** Gives up on the unsaved answer: it leaves this browser's storage and the next item is loaded. */
function discardPending() {
  clearRetry();
  state.pending = null;
  storePending();
  state.failures = 0;
  showMessage("The answer was discarded: the server never confirmed it.", "info");
  loadNext();
}

// ---------------------------------------------------------------- keyboard

/** Typing in these must never trigger a shortcut. Radio buttons are left out: digits rate them. */
function isTextEntry(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  return target.tagName === "INPUT" && !["radio", "checkbox", "button", "submit", "reset"].includes(target.type);
}

function submitCurrent() {
  const kind = state.project.kind;
  if (kind === "ranking") submitRanking();
  else if (kind === "rating") submitRating();
}

function onKeyDown(event) {
  const target = event.target;
  if (isTextEntry(target)) {
    if (event.key === "Escape") {
      event.preventDefault();
      target.blur();
    } else if (target.id === "reason" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!state.busy && state.item) submitCurrent();
    } else if (target.classList.contains("rating-number") && event.key === "Enter") {
      event.preventDefault();
      if (!state.busy && state.item) submitRating();
    }
    return;
  }
  // A held key repeats: it must not answer the next item too as soon as that appears.
  if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing || event.repeat) return;
  // Enter or Space on a focused button or link does what the button says.
  const onControl = target instanceof Element && target.closest("button, a, summary");
  if (onControl && (event.key === "Enter" || event.key === " ")) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === "g") {
    event.preventDefault();
    $("guidelines").open = !$("guidelines").open;
    return;
  }
  if (state.busy || !state.item) return;
  if (key === "r" && !$("reason-wrap").hidden) {
    event.preventDefault();
    $("reason").focus();
    return;
  }
  const kind = state.project.kind;
  if (kind === "pairwise" && PAIRWISE_KEYS.has(key)) {
    event.preventDefault();
    submitPairwise(PAIRWISE_KEYS.get(key));
  } else if (kind === "ranking") {
    if (/^[1-9]$/.test(key)) {
      event.preventDefault();
      addRank(Number(key) - 1);
    } else if (key === "Backspace") {
      event.preventDefault();
      undoRank();
    } else if (key === "Enter") {
      event.preventDefault();
      submitRanking();
    }
  } else if (kind === "rating") {
    const scale = state.project.scale;
    const value = key === "0" && scale >= 10 ? 10 : Number(key);
    if (scale <= 10 && /^[0-9]$/.test(key) && value >= 1 && value <= scale) {
      event.preventDefault();
      rateWithKey(value);
    } else if (key === "Enter") {
      event.preventDefault();
      submitRating();
    }
  }
}

// ---------------------------------------------------------------- start

function renderProject(project) {
  document.title = `${project.name} · rlxf label`;
  $("project-name").textContent = project.name;
  const guidelines = (project.guidelines || "").trim();
  $("guidelines").hidden = !guidelines;
  $("guidelines-text").textContent = guidelines;
  // Open the guidelines on a labeller's first visit to a project, closed after that.
  try {
    const seenKey = `rlxf.guidelines-seen.${state.me.user.id}.${project.id}`;
    if (guidelines && !localStorage.getItem(seenKey)) {
      $("guidelines").open = true;
      localStorage.setItem(seenKey, "1");
    }
  } catch (error) {
    // No storage: leave the panel closed.
  }
  $("reason-wrap").hidden = project.ask_reason === "off";
  $("reason-label").textContent = project.ask_reason === "required" ? "Reason (required)" : "Reason (optional)";
  const help = {
    pairwise: "Keys: 1 or a = A better, 2 or b = B better, 3 or t = tie, 4 or x = both bad.",
    ranking: "Keys: press response numbers best first, Backspace undoes, Enter submits.",
    rating:
      project.scale <= 10
        ? `Keys: digits ${project.scale === 10 ? "1–9 and 0 (= 10)" : `1–${project.scale}`} rate the focused row and move on, Tab and arrows move, Enter submits.`
        : `Keys: type 1–${project.scale} in each box, Tab moves, Enter submits.`,
  }[project.kind];
  const reasonHelp = project.ask_reason === "off" ? "" : " r writes a reason, Esc leaves the box.";
  $("shortcut-help").textContent = `${help}${reasonHelp} g shows or hides the guidelines.`;
}

async function start() {
  state.me = await requireLogin();
  renderUserBar(state.me);
  let project;
  try {
    project = (await api("GET", `/api/projects/${encodeURIComponent(projectId)}`)).data;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 403 || error.status === 404)) {
      $("project-name").textContent = "Project not available";
      showMessage(error.status === 403 ? "You are not a member of this project." : "There is no such project.", "error");
      return;
    }
    throw error;
  }
  state.project = project;
  renderProject(project);
  document.addEventListener("keydown", onKeyDown);
  window.addEventListener("beforeunload", (event) => {
    if (state.pending) {
      // The browser asks before leaving with an unsaved answer (it stays in localStorage either way).
      event.preventDefault();
      event.returnValue = "";
    }
  });
  state.pending = loadStoredPending();
  if (state.pending) {
    showMessage("Sending the answer you gave before the page was closed…", "info");
    sendPending();
  } else {
    loadNext();
  }
}

start().catch(showFatal);
