// The login page: posts the form to /api/login, then goes to the page named by ?next= (a page on this
// site only, so a crafted link cannot send the user elsewhere) or to /.

import { ApiError, login } from "./api.js";
import { clearMessage, showMessage } from "./page.js";

/**
 * The ?next= target as a path on this site, else "/". The browser's own URL parser decides, not string
 * checks: it drops tabs and newlines, reads "\" as "/" and resolves "." and "..", so "/%09/evil.example",
 * "/\evil.example" and the like all parse to another host, which is refused. A path that still starts with
 * "//" after parsing (e.g. from "/.//evil.example") would be read as a host once assigned, so its leading
 * slashes are folded into one.
 */
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  let url;
  try {
    url = new URL(next, location.origin);
  } catch (error) {
    return "/";
  }
  if (url.origin !== location.origin) return "/";
  return url.pathname.replace(/^\/+/, "/") + url.search + url.hash;
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
      // A disabled account gets the same answer: the page cannot tell, and must not.
      showMessage("Wrong username or password.", "error");
      document.getElementById("password").select();
    } else if (error instanceof ApiError && error.status === 429) {
      const wait = error.retryAfter !== null ? `in ${error.retryAfter} s` : "later";
      showMessage(`Too many failed attempts; try again ${wait}.`, "error");
    } else {
      showMessage(`Could not log in: ${error.message}`, "error");
    }
  }
});
