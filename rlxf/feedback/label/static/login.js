// The login page: posts the form to /api/login, then goes to the page named by ?next= (a path on this
// site only, so a crafted link cannot send the user elsewhere) or to /.

import { ApiError, login } from "./api.js";
import { clearMessage, showMessage } from "./page.js";

/** The ?next= target when it is a path on this site, else "/". */
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

const form = document.getElementById("login-form");
const button = document.getElementById("login-button");
button.disabled = false; // the page ships it disabled until this script handles the form

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = document.getElementById("username").value.trim();
  const password = document.getElementById("password").value;
  if (!username || !password) {
    showMessage("Enter your username and password.", "warning");
    return;
  }
  button.disabled = true;
  clearMessage();
  try {
    const { user } = await login(username, password);
    // An admin's home is /admin (the server redirects / there too, but a browser may have / cached).
    const next = nextPage();
    location.assign(next === "/" && user.is_admin ? "/admin" : next);
  } catch (error) {
    button.disabled = false;
    if (error instanceof ApiError && error.status === 401) {
      showMessage("Wrong username or password.", "error");
      document.getElementById("password").select();
    } else {
      showMessage(`Could not log in: ${error.message}`, "error");
    }
  }
});
