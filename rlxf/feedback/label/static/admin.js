// The admin page (/admin): every project with its progress (items with k labels / all items), agreement
// figures and export links; forms to create an account, add a labeller to a project and create a project
// from a candidates JSONL file; the list of accounts with each one's status and open sessions, and per
// account: disable / enable, set a password (a form in the table, so the password is typed into a real
// password field), end its sessions. The admin's own row offers none of these: disabling oneself is
// refused, and a password set or sessions ended here would end this very session; the account page does
// both for oneself and keeps this session.

import { ApiError, api, requireLogin } from "./api.js";
import { agreementSummary, exportLinks, fetchAgreement, rowAction } from "./admin_parts.js";
import { el, progressBar, renderUserBar, showFatal, showFieldErrors, showMessage, showSessionEnded } from "./page.js";

const $ = (id) => document.getElementById(id);
const USER_COLUMNS = ["Username", "Role", "Status", "Sessions", "Actions"];
let me = null;

async function loadProjects() {
  const { data: projects } = await api("GET", "/api/projects");
  const rows = projects.map((project) => {
    const agreementCell = el("td", { class: "agreement", text: "…" });
    fetchAgreement(project.id).then((agreement) => {
      agreementCell.textContent = agreement ? agreementSummary(agreement) : "–";
    });
    return el(
      "tr",
      { "data-project": project.id },
      el("td", {}, el("a", { href: `/admin/projects/${encodeURIComponent(project.id)}`, text: project.name })),
      el("td", { text: project.kind }),
      el("td", {}, progressBar(project.progress)),
      el("td", { class: "num", text: String(project.labels_per_item) }),
      agreementCell,
      el("td", {}, exportLinks(project)),
    );
  });
  $("projects").replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No project yet." }))]),
  );
  const select = document.querySelector("#member-form select[name=project]");
  const chosen = select.value;
  select.replaceChildren(...projects.map((p) => el("option", { value: p.id, text: p.name })));
  if (chosen) select.value = chosen;
}

/** One cell of the accounts table; data-label names its column where the table is stacked (phones). */
function userCell(column, content, attrs = {}) {
  return el("td", { "data-label": USER_COLUMNS[column], ...attrs }, content);
}

/** The accounts table again; then focuses the button `focus` ({uid, action}) names, if it still exists. */
async function loadUsers(focus = null) {
  const { data: users } = await api("GET", "/api/users");
  $("users").replaceChildren(...users.map(userRow));
  // Disabled accounts cannot log in, so they are no use as new members.
  $("usernames").replaceChildren(
    ...users.filter((u) => !u.is_admin && !u.disabled).map((u) => el("option", { value: u.username })),
  );
  if (focus) {
    const row = $("users").querySelector(`tr[data-user="${focus.uid}"]`);
    (row?.querySelector(`[data-action="${focus.action}"]`) || row?.querySelector("button"))?.focus();
  }
}

function userRow(user) {
  const self = me && user.id === me.user.id;
  const sessions = Number.isInteger(user.active_sessions) ? String(user.active_sessions) : "–";
  return el(
    "tr",
    { "data-user": user.id, class: user.disabled ? "disabled" : null },
    userCell(0, el("span", { class: "name", text: user.username }), { class: "user-cell" }),
    userCell(1, user.is_admin ? "admin" : "labeller"),
    userCell(2, el("span", { class: `status ${user.disabled ? "off" : "on"}`, text: user.disabled ? "disabled" : "active" })),
    userCell(3, sessions, { class: "num" }),
    userCell(4, self ? ownActions() : userActions(user)),
  );
}

function ownActions() {
  return el(
    "span",
    { class: "row-actions" },
    el("span", { class: "muted", text: "you:" }),
    el("a", { href: "/account" }, "your account page"),
  );
}

function actionButton(label, action, user, onclick, extra = {}) {
  return el(
    "button",
    {
      type: "button",
      class: "button small secondary",
      "data-action": action,
      "aria-label": `${label}: ${user.username}`,
      onclick,
      ...extra,
    },
    label,
  );
}

function userActions(user) {
  const name = `"${user.username}"`;
  const toggle = user.disabled
    ? actionButton("Enable", "enable", user, (event) =>
        runUserAction(event.currentTarget, user, "enable", async () => {
          await api("PATCH", `/api/users/${encodeURIComponent(user.id)}`, { disabled: false });
          return `${name} is enabled and can log in again.`;
        }),
      )
    : actionButton("Disable", "disable", user, (event) =>
        runUserAction(
          event.currentTarget,
          user,
          "disable",
          async () => {
            await api("PATCH", `/api/users/${encodeURIComponent(user.id)}`, { disabled: true });
            return `${name} is disabled: signed out everywhere and unable to log in. Their answers stay.`;
          },
          `Disable ${name}? They are signed out at once and cannot log in until enabled again. Their answers stay.`,
        ),
      );
  const setPassword = actionButton("Set password", "password", user, (event) => openPasswordForm(user, event.currentTarget), {
    "aria-expanded": "false",
  });
  const endSessions = actionButton("End sessions", "sessions", user, (event) =>
    runUserAction(event.currentTarget, user, "sessions", async () => {
      const { data } = await api("DELETE", `/api/users/${encodeURIComponent(user.id)}/sessions`);
      const n = data && Number.isInteger(data.revoked) ? data.revoked : 0;
      return `Ended ${n} session${n === 1 ? "" : "s"} of ${name}.`;
    }),
  );
  return el("span", { class: "row-actions" }, toggle, setPassword, endSessions);
}

/** rowAction, then the table again with the focus back on the row's buttons. */
async function runUserAction(button, user, action, run, question = null) {
  if (await rowAction(button, run, question)) {
    // Disable and Enable swap places: keep the focus on whichever now stands there.
    const next = { disable: "enable", enable: "disable" }[action] || action;
    await loadUsers({ uid: user.id, action: next }).catch((error) => showMessage(error.message, "error"));
  }
}

/** A row under the user's row with a password field; Escape or Cancel closes it. One is open at a time. */
function openPasswordForm(user, opener) {
  const open = $("users").querySelector("tr.inline-form-row");
  const wasThisOne = open && open.dataset.for === String(user.id);
  closePasswordForm();
  if (wasThisOne) return; // the button toggles
  const formId = `password-form-${user.id}`;
  const input = el("input", { name: "password", type: "password", autocomplete: "new-password", required: true });
  const close = () => {
    closePasswordForm();
    opener.focus();
  };
  const form = el(
    "form",
    { id: formId, class: "inline-form", method: "post", novalidate: true, "aria-label": `Set the password of ${user.username}` },
    el("label", {}, `New password for ${user.username}`, input),
    el(
      "span",
      { class: "row-actions" },
      el("button", { type: "submit", class: "button small" }, "Save password"),
      el("button", { type: "button", class: "button small secondary", onclick: close }, "Cancel"),
    ),
  );
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = input.value;
    if (!password) {
      showFieldErrors(form, { password: "Enter the new password." });
      input.focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await api("PUT", `/api/users/${encodeURIComponent(user.id)}/password`, { password });
      closePasswordForm();
      showMessage(`The password of "${user.username}" is set; their sessions were ended.`, "ok");
      await loadUsers({ uid: user.id, action: "password" });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        showSessionEnded();
        return;
      }
      const first = showFieldErrors(form, error.fieldErrors || {});
      if (first) {
        first.focus();
        first.select();
      } else {
        showMessage(error.message, "error");
      }
    } finally {
      button.disabled = false;
    }
  });
  const row = el(
    "tr",
    { class: "inline-form-row", "data-for": user.id },
    el("td", { colspan: USER_COLUMNS.length }, form),
  );
  opener.closest("tr").after(row);
  opener.setAttribute("aria-expanded", "true");
  input.focus();
}

function closePasswordForm() {
  for (const row of $("users").querySelectorAll("tr.inline-form-row")) {
    $("users").querySelector(`tr[data-user="${row.dataset.for}"] [data-action="password"]`)?.setAttribute("aria-expanded", "false");
    row.remove();
  }
}

/** Runs a form's action with its button disabled; shows the outcome in the message line. */
function handleForm(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const done = await action(new FormData(form));
      showMessage(done, "ok");
    } catch (error) {
      showMessage(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
}

/** The candidates JSONL file as a list of records; an error names the line that is not JSON. */
async function readCandidates(file) {
  const text = await file.text();
  const items = [];
  text.split(/\r?\n/).forEach((line, index) => {
    if (!line.trim()) return;
    try {
      items.push(JSON.parse(line));
    } catch (error) {
      throw new Error(`${file.name}, line ${index + 1}: not valid JSON (${error.message})`);
    }
  });
  if (!items.length) throw new Error(`${file.name}: no items in the file`);
  return items;
}

async function start() {
  me = await requireLogin();
  renderUserBar(me);
  handleForm($("user-form"), async (form) => {
    const username = form.get("username").trim();
    await api("POST", "/api/users", { username, password: form.get("password"), is_admin: form.get("is_admin") === "on" });
    $("user-form").reset();
    await loadUsers();
    return `Account "${username}" created.`;
  });

  handleForm($("member-form"), async (form) => {
    const username = form.get("username").trim();
    const select = $("member-form").querySelector("select");
    await api("POST", `/api/projects/${encodeURIComponent(form.get("project"))}/members`, { username });
    $("member-form").querySelector("input[name=username]").value = "";
    return `"${username}" can now label "${select.selectedOptions[0].textContent}".`;
  });

  handleForm($("project-form"), async (form) => {
    const kind = form.get("kind");
    const aspects = String(form.get("aspects") || "")
      .split(",")
      .map((a) => a.trim())
      .filter(Boolean);
    const body = {
      name: form.get("name").trim(),
      kind,
      guidelines: form.get("guidelines"),
      labels_per_item: Number(form.get("labels_per_item")),
      scale: Number(form.get("scale") || 5),
      ask_reason: form.get("ask_reason"),
      items: await readCandidates(form.get("items")),
    };
    if (kind === "rating" && aspects.length) body.aspects = aspects;
    await api("POST", "/api/projects", body);
    $("project-form").reset();
    await loadProjects();
    return `Project "${body.name}" created with ${body.items.length} items; add labellers to it above.`;
  });
  // The forms ship with disabled buttons (and method="post"), so nothing is sent before this point.
  for (const button of document.querySelectorAll("form button[type=submit]")) button.disabled = false;
  await Promise.all([loadProjects(), loadUsers()]);
}

start().catch(showFatal);
