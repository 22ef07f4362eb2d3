// The home page: the projects the labeller is a member of, each with their own progress and a button to
// go on labelling (the first unfinished project's button is focused, so Enter starts work).

import { api, requireLogin } from "./api.js";
import { el, progressBar, renderUserBar, showFatal, showMessage } from "./page.js";

const KIND_NAMES = { pairwise: "pairwise comparison", ranking: "ranking", rating: "rating" };

async function start() {
  const me = await requireLogin();
  if (me.user.is_admin) {
    // The server sends admins from / to /admin; this page may still come from the browser's cache.
    location.replace("/admin");
    return;
  }
  renderUserBar(me);
  const { data: projects } = await api("GET", "/api/projects");
  const list = document.getElementById("projects");
  list.removeAttribute("aria-busy");
  if (!projects.length) {
    showMessage("You are not in any project yet. Ask an admin to add you to one.", "info");
    return;
  }
  list.replaceChildren(
    ...projects.map((project) => {
      const finished = project.progress.total > 0 && project.progress.done >= project.progress.total;
      return el(
        "li",
        { class: "card" },
        el("span", { class: "name" }, project.name, el("span", { class: "muted", text: ` · ${KIND_NAMES[project.kind] || project.kind}` })),
        progressBar(project.progress),
        el(
          "a",
          {
            class: finished ? "button secondary" : "button",
            href: `/projects/${encodeURIComponent(project.id)}/label`,
            "aria-label": `${finished ? "Open" : "Label"} ${project.name}`,
            "data-unfinished": finished ? null : "1",
          },
          finished ? "Open" : "Label",
        ),
      );
    }),
  );
  list.querySelector("a[data-unfinished]")?.focus();
}

start().catch(showFatal);
