// One project for an admin (/admin/projects/{pid}): settings, progress, agreement, export links, the
// guidelines, its labellers (a form to add one, a Remove button on each) and every answer (newest first).
// Removing a labeller keeps their answers (they still count and are exported); they stop seeing the project.

import { api, requireLogin } from "./api.js";
import { agreementSummary, exportLinks, fetchAgreement, rowAction } from "./admin_parts.js";
import { el, progressBar, renderUserBar, showFatal, showMessage } from "./page.js";

const $ = (id) => document.getElementById(id);
const projectId = decodeURIComponent(location.pathname.split("/")[3] || "");
const base = `/api/projects/${encodeURIComponent(projectId)}`;

function facts(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
}

/** An answer in display slots as the labeller gave it, e.g. "A", "2 › 1 › 3", "overall 4 | overall 2". */
function describeAnswer(answer) {
  if (answer.choice !== undefined && answer.choice !== null) return String(answer.choice);
  if (Array.isArray(answer.ranking)) return answer.ranking.map((slot) => slot + 1).join(" › ");
  if (Array.isArray(answer.ratings)) {
    return answer.ratings
      .map((ratings) =>
        Object.entries(ratings)
          .map(([aspect, value]) => `${aspect} ${value}`)
          .join(", "),
      )
      .join(" | ");
  }
  return JSON.stringify(answer.value);
}

async function loadProject() {
  const { data: project } = await api("GET", base);
  document.title = `${project.name} · rlxf label`;
  $("project-name").textContent = project.name;
  const settings = [
    ["Kind", project.kind],
    ["Items with k labels", progressBar(project.progress)],
    ["Labels per item (k)", String(project.labels_per_item)],
    ["Reason", project.ask_reason],
    ["Export", exportLinks(project)],
  ];
  if (project.kind === "rating") {
    settings.splice(3, 0, ["Aspects", project.aspects.join(", ")], ["Scale", `1..${project.scale}`]);
  }
  facts($("settings"), settings);
  $("guidelines-text").textContent = project.guidelines || "(none)";
  return project;
}

async function loadAgreement() {
  const agreement = await fetchAgreement(projectId);
  if (!agreement) {
    facts($("agreement"), [["Agreement", "could not be computed"]]);
    return;
  }
  const number = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "–");
  facts($("agreement"), [
    ["Summary", agreementSummary(agreement)],
    ["Items with 2+ labels", String(agreement.items_with_2plus)],
    [
      "Percent agreement",
      typeof agreement.percent_agreement === "number" ? `${number(agreement.percent_agreement * 100, 1)}%` : "–",
    ],
    ["Krippendorff's α", number(agreement.krippendorff_alpha, 3)],
    ["Labels", String(agreement.labels)],
    ["Labellers", String(agreement.labellers)],
  ]);
}

async function loadMembers() {
  const [{ data: members }, { data: users }] = await Promise.all([
    api("GET", `${base}/members`),
    api("GET", "/api/users"),
  ]);
  $("members").replaceChildren(
    ...(members.length ? members.map(memberItem) : [el("li", { class: "muted", text: "none yet" })]),
  );
  const memberNames = new Set(members.map((m) => m.username));
  $("usernames").replaceChildren(
    ...users
      .filter((u) => !u.is_admin && !u.disabled && !memberNames.has(u.username))
      .map((u) => el("option", { value: u.username })),
  );
}

function memberItem(member) {
  const name = `"${member.username}"`;
  const remove = el(
    "button",
    {
      type: "button",
      class: "button small secondary",
      "aria-label": `Remove ${member.username} from this project`,
      onclick: async (event) => {
        const removed = await rowAction(
          event.currentTarget,
          async () => {
            await api("DELETE", `${base}/members/${encodeURIComponent(member.id)}`);
            return `${name} was removed from this project; their answers stay.`;
          },
          `Remove ${name} from this project? They stop seeing it; their answers stay.`,
        );
        if (removed === null) return; // the admin said no
        // Refreshed on a failure too: a 404 means someone else removed them already.
        await loadMembers().catch((error) => showMessage(error.message, "error"));
        if (removed) $("member-form").querySelector("input[name=username]").focus();
      },
    },
    "Remove",
  );
  return el(
    "li",
    { "data-user": member.id },
    el("span", { class: "member-name", text: member.username }),
    member.disabled ? el("span", { class: "status off", text: "disabled" }) : null,
    remove,
  );
}

async function loadAnswers() {
  const { data: answers } = await api("GET", `${base}/answers`);
  $("answers-count").textContent = `${answers.length} answers`;
  $("answers").replaceChildren(
    ...[...answers].reverse().map((answer) =>
      el(
        "tr",
        {},
        el("td", { class: "num", text: String(answer.answer_id) }),
        el("td", { text: answer.username || String(answer.user_id) }),
        el("td", { class: "num", text: String(answer.item_id) }),
        el("td", { text: describeAnswer(answer) }),
        el("td", { class: "text", text: answer.reason || "" }),
        el("td", { text: answer.created_at ? new Date(answer.created_at).toLocaleString() : "" }),
      ),
    ),
  );
}

async function start() {
  const me = await requireLogin();
  renderUserBar(me);
  $("member-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("member-form").querySelector("input[name=username]");
    const username = input.value.trim();
    const button = $("member-form").querySelector("button");
    button.disabled = true;
    try {
      await api("POST", `${base}/members`, { username });
      input.value = "";
      showMessage(`"${username}" can now label this project.`, "ok");
      await loadMembers();
    } catch (error) {
      showMessage(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  // The form ships with a disabled button (and method="post"), so nothing is sent before this point.
  $("member-form").querySelector("button").disabled = false;
  await loadProject();
  await Promise.all([loadAgreement(), loadMembers(), loadAnswers()]);
}

start().catch(showFatal);
