// The admin page (/admin): every project with its progress (items with k labels / all items), agreement
// figures and export links; forms to create an account, add a labeller to a project and create a project
// from a candidates JSONL file; the list of accounts.

import { api, requireLogin } from "./api.js";
import { agreementSummary, exportLinks, fetchAgreement } from "./admin_parts.js";
import { el, progressBar, renderUserBar, showFatal, showMessage } from "./page.js";

const $ = (id) => document.getElementById(id);

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

async function loadUsers() {
  const { data: users } = await api("GET", "/api/users");
  $("users").replaceChildren(
    ...users.map((user) =>
      el("tr", {}, el("td", { text: user.username }), el("td", { text: user.is_admin ? "admin" : "labeller" })),
    ),
  );
  $("usernames").replaceChildren(...users.filter((u) => !u.is_admin).map((u) => el("option", { value: u.username })));
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
  const me = await requireLogin();
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
