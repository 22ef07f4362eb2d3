// What every page of the labelling app shares besides the API: building DOM nodes, the top bar with the
// user's name, an Account link and a logout button, the message line, messages next to form fields, and
// progress as "12 of 200".
// Text from the server is only ever set with textContent (never innerHTML), so prompts and responses that
// contain markup are shown as text. The server's Content-Security-Policy allows no inline style either:
// styling comes from app.css classes (or element.style via the CSSOM), never a style attribute.

import { loginUrl, logout } from "./api.js";

/**
 * Creates an element. attrs: attributes, except `text` (textContent), `on<event>` (listeners) and
 * boolean values (present or absent). children: nodes or strings; null/false ones are left out.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    // The CSP (style-src 'self') blocks style attributes: fail loudly here rather than silently in the browser.
    if (name === "style") throw new Error("el(): use a class from app.css, not a style attribute");
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

/** Fills the top bar's user area: name, role, a link to the account page, logout button. */
export function renderUserBar(me) {
  const slot = document.getElementById("user-bar");
  if (!slot) return;
  const role = me.user.is_admin ? "admin" : "labeller";
  const here = location.pathname === "/account";
  slot.replaceChildren(
    el("span", { class: "user-name", text: `${me.user.username} (${role})` }),
    el("a", { href: "/account", id: "account-link", "aria-current": here ? "page" : null }, "Account"),
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

/**
 * The session is gone (logged out elsewhere, signed out by an admin, password changed, account disabled):
 * says so and offers the login page, which comes back here afterwards.
 */
export function showSessionEnded(text = "Your session has ended. Log in again to go on.") {
  showMessage(text, "error", el("a", { class: "button small", href: loginUrl() }, "Log in"));
}

/**
 * Shows each field's message under its field (fields: {name: message}, e.g. ApiError.fieldErrors) and
 * marks the input invalid for screen readers; inputs not named are cleared. form: the <form>; each input
 * is found by name, its message box is the element with id `${form.id}-${name}-error` (made when missing).
 * Returns the first input with a message, for focusing it.
 */
export function showFieldErrors(form, fields) {
  let first = null;
  for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
    const boxId = `${form.id}-${input.name}-error`;
    let box = document.getElementById(boxId);
    const message = Object.hasOwn(fields, input.name) ? fields[input.name] : null;
    if (!message) {
      input.removeAttribute("aria-invalid");
      if (box) box.hidden = true;
      continue;
    }
    if (!box) {
      // After the <label>, not inside it: inside, the message would become part of the field's name.
      box = el("span", { id: boxId, class: "field-error" });
      (input.closest("label") || input).insertAdjacentElement("afterend", box);
    }
    box.textContent = message;
    box.hidden = false;
    input.setAttribute("aria-invalid", "true");
    const described = new Set((input.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean));
    described.add(boxId);
    input.setAttribute("aria-describedby", [...described].join(" "));
    first = first || input;
  }
  return first;
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
