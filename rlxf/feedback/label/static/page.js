// What every page of the labelling app shares besides the API: building DOM nodes, the top bar with the
// user's name and a logout button, the message line, and progress as "12 of 200".
// Text from the server is only ever set with textContent (never innerHTML), so prompts and responses that
// contain markup are shown as text.

import { logout } from "./api.js";

/**
 * Creates an element. attrs: attributes, except `text` (textContent), `on<event>` (listeners) and
 * boolean values (present or absent). children: nodes or strings; null/false ones are left out.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A key-cap hint, e.g. kbd("1"). */
export function kbd(key) {
  return el("kbd", { text: key });
}

/** Fills the top bar's user area: name, role, logout button. */
export function renderUserBar(me) {
  const slot = document.getElementById("user-bar");
  if (!slot) return;
  const role = me.user.is_admin ? "admin" : "labeller";
  slot.replaceChildren(
    el("span", { class: "user-name", text: `${me.user.username} (${role})` }),
    el("button", { type: "button", class: "button small secondary", id: "logout", onclick: () => logout() }, "Log out"),
  );
  if (me.user.is_admin) {
    const nav = document.getElementById("nav");
    if (nav && !nav.querySelector('a[href="/admin"]')) nav.append(el("a", { href: "/admin", text: "Admin" }));
  }
}

/**
 * Shows a message in the page's message line (role="alert" or "status" in the HTML). kind: "error",
 * "warning", "info" or "ok"; actions: optional buttons placed after the text.
 */
export function showMessage(text, kind = "info", ...actions) {
  const box = document.getElementById("message");
  if (!box) return;
  box.className = `message ${kind}`;
  box.replaceChildren(el("span", { text }), ...actions);
  box.hidden = false;
}

export function clearMessage() {
  const box = document.getElementById("message");
  if (!box) return;
  box.hidden = true;
  box.replaceChildren();
}

/** "12 of 200". */
export function progressText(progress) {
  return `${progress.done} of ${progress.total}`;
}

/** A <progress> bar with the same figures as text beside it. */
export function progressBar(progress) {
  return el(
    "span",
    { class: "progress-cell" },
    el("progress", { max: Math.max(progress.total, 1), value: progress.done, "aria-hidden": "true" }),
    el("span", { class: "progress-text", text: progressText(progress) }),
  );
}

/** Shows an unexpected failure (e.g. a page's first load) and offers a reload. */
export function showFatal(error) {
  console.error(error);
  showMessage(
    `Something went wrong: ${error.message || error}`,
    "error",
    el("button", { type: "button", class: "button small", onclick: () => location.reload() }, "Reload"),
  );
}
