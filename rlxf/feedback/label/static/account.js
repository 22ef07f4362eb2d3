// The account page (/account), for every logged-in user: change the password (the server then signs out
// the user's other sessions and keeps this one) and sign out the other sessions without changing it.
// The server's 422 messages are shown next to the field they name (current_password, new_password).

import { ApiError, api, requireLogin } from "./api.js";
import { clearMessage, renderUserBar, showFatal, showFieldErrors, showMessage, showSessionEnded } from "./page.js";

const $ = (id) => document.getElementById(id);

/** "1 other session" / "3 other sessions". */
function sessionCount(n) {
  return `${n} other session${n === 1 ? "" : "s"}`;
}

/** Shows a failed call: a lost session says so, a 422 goes next to its fields, the rest in the message line. */
function showError(error, form = null) {
  if (error instanceof ApiError && error.status === 401) {
    showSessionEnded("Your session has ended (signed out elsewhere, or your password was changed). Log in again to go on.");
    return;
  }
  const fields = error instanceof ApiError ? error.fieldErrors : {};
  const first = form ? showFieldErrors(form, fields) : null;
  if (first) {
    showMessage("Please correct the fields marked below.", "error");
    first.focus();
    first.select?.();
  } else {
    showMessage(error.message, "error");
  }
}

async function changePassword(event) {
  event.preventDefault();
  const form = $("password-form");
  const data = new FormData(form);
  const current = data.get("current_password");
  const fresh = data.get("new_password");
  const repeat = data.get("repeat_password");
  // Checked here before anything is sent; the server checks the rest (length, common passwords).
  const local = {};
  if (!current) local.current_password = "Enter your current password.";
  if (!fresh) local.new_password = "Enter a new password.";
  else if (fresh !== repeat) local.repeat_password = "The two new passwords differ.";
  const first = showFieldErrors(form, local);
  if (first) {
    showMessage("Please correct the fields marked below.", "warning");
    first.focus();
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  clearMessage();
  try {
    await api("PUT", "/api/me/password", { current_password: current, new_password: fresh });
    form.reset();
    showFieldErrors(form, {});
    showMessage("Your password was changed. Your other sessions were signed out; this one stays.", "ok");
  } catch (error) {
    showError(error, form);
  } finally {
    button.disabled = false;
  }
}

async function endOtherSessions(event) {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    const { data } = await api("DELETE", "/api/me/sessions");
    const revoked = data && Number.isInteger(data.revoked) ? data.revoked : 0;
    showMessage(
      revoked ? `Signed out ${sessionCount(revoked)}; this one stays.` : "There was no other session; this one stays.",
      "ok",
    );
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function start() {
  const me = await requireLogin();
  if (me.user.is_admin) {
    // An admin's home is /admin: the nav's first link points there (before renderUserBar, which adds an
    // Admin link only when there is none).
    const home = $("nav").querySelector("a");
    home.href = "/admin";
    home.textContent = "Admin";
    document.querySelector(".brand").href = "/admin";
  }
  renderUserBar(me);
  $("who").textContent = `Logged in as ${me.user.username} (${me.user.is_admin ? "admin" : "labeller"}).`;
  $("account-username").value = me.user.username;
  $("password-form").addEventListener("submit", changePassword);
  $("end-sessions").addEventListener("click", endOtherSessions);
  // The form and button ship disabled (and the form with method="post"), so nothing is sent before this point.
  $("password-form").querySelector("button[type=submit]").disabled = false;
  $("end-sessions").disabled = false;
}

start().catch(showFatal);
