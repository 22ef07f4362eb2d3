// Pieces the two admin pages share: a project's export links, its agreement figures, and running a
// row's action button (disable an account, remove a member, ...) with its outcome in the message line.

import { ApiError, api } from "./api.js";
import { el, showMessage, showSessionEnded } from "./page.js";

/** The export formats of a project kind (the backend's export.FORMAT_KINDS): preferences come from
 * pairwise and ranking projects, ratings from rating projects, raw from any. */
export function exportFormats(kind) {
  return kind === "rating" ? ["ratings", "raw"] : ["preferences", "raw"];
}

/** Download links for a project's exports (JSONL files). */
export function exportLinks(project) {
  const safeName = project.name.replace(/[^A-Za-z0-9_.-]+/g, "_");
  return el(
    "span",
    { class: "links" },
    exportFormats(project.kind).map((format) =>
      el(
        "a",
        {
          href: `/api/projects/${encodeURIComponent(project.id)}/export?format=${format}`,
          download: `${safeName}-${format}.jsonl`,
          "data-format": format,
        },
        format,
      ),
    ),
  );
}

function formatNumber(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

/** The agreement figures as short text: "72.5% agree · α 0.41 · 30 items with 2+ labels". */
export function agreementSummary(agreement) {
  if (!agreement || !agreement.items_with_2plus) return "no item has 2+ labels yet";
  const percent =
    typeof agreement.percent_agreement === "number" ? `${formatNumber(agreement.percent_agreement * 100, 1)}% agree` : "–";
  return `${percent} · α ${formatNumber(agreement.krippendorff_alpha)} · ${agreement.items_with_2plus} items with 2+ labels`;
}

/** GET the agreement of one project; null (and the reason logged) when it cannot be had. */
export async function fetchAgreement(projectId) {
  try {
    return (await api("GET", `/api/projects/${encodeURIComponent(projectId)}/agreement`)).data;
  } catch (error) {
    console.warn(`agreement of project ${projectId}:`, error);
    return null;
  }
}

/**
 * Runs one action of a table row: asks first when `question` is given (window.confirm: a native dialog,
 * keyboard-usable and announced by screen readers), disables the button while it runs, then shows what
 * `action` returns (a sentence) or why it failed. Resolves true when it succeeded, false when it failed,
 * null when the admin said no.
 */
export async function rowAction(button, action, question = null) {
  if (question && !window.confirm(question)) return null;
  button.disabled = true;
  try {
    showMessage(await action(), "ok");
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showSessionEnded();
    else showMessage(error.message, "error");
    return false;
  } finally {
    button.disabled = false;
  }
}
