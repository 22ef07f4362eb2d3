// The labelling app's JSON API client, shared by every page: fetch with the session cookie and the CSRF
// header, errors turned into readable messages, the login check and logout.
// It leaves out retries: the labelling page decides what to retry (label.js), other pages show the error.

/**
 * An API call that did not succeed. status 0 means the server could not be reached at all. retryAfter: the
 * seconds the server asked us to wait (its Retry-After header, e.g. on a 429), or null when it named none.
 * detail: the body's `detail` as sent (a string or FastAPI's list of {loc, msg}), for forms that show each
 * field's message next to the field (fieldErrors).
 */
export class ApiError extends Error {
  constructor(status, message, retryAfter = null, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.retryAfter = retryAfter;
    this.detail = detail;
  }

  /** {field: message} of a 422 whose detail names body fields (loc ["body", "new_password"] -> new_password). */
  get fieldErrors() {
    const fields = Object.create(null); // no inherited keys: a field named "constructor" is still found
    if (!Array.isArray(this.detail)) return fields;
    for (const error of this.detail) {
      const loc = Array.isArray(error && error.loc) ? error.loc : [];
      if (loc[0] === "body" && typeof loc[1] === "string" && !(loc[1] in fields)) fields[loc[1]] = String(error.msg);
    }
    return fields;
  }

  /** True when sending the same request again later may succeed: no answer, a timeout or a 5xx. */
  get retryable() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

// The session's CSRF token (from /api/login or /api/me); sent on every state-changing request.
let csrfToken = null;

// A request still without an answer after this long counts as a network failure (the labelling page then
// retries it; answers are idempotent by client_id). Without it a connection that silently died, as on a
// phone changing networks, would leave the page waiting forever.
const REQUEST_TIMEOUT_MS = 30000;

/** Turns FastAPI's `detail` (a string, or a list of validation errors) into one readable line. */
export function describeDetail(data, status) {
  const detail = data && typeof data === "object" ? data.detail : data;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((error) => {
        // loc is e.g. ["body", "choice"]: name the field, not where FastAPI found it.
        const loc = Array.isArray(error.loc) ? error.loc.filter((part) => part !== "body").join(".") : "";
        return loc ? `${loc}: ${error.msg}` : String(error.msg || JSON.stringify(error));
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return `the server answered ${status}`;
}

/** Retry-After as whole seconds: it is either a number of seconds or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter(value) {
  if (!value) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

/**
 * Sends one JSON request and returns {status, data}; data is null for 204. Throws ApiError on a network
 * failure (status 0) or any status outside 200..299.
 */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  let text;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      signal: controller.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    // Reading the body can fail too when the connection drops half-way.
    text = await response.text();
  } catch (error) {
    const why = controller.signal.aborted ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : "network error";
    throw new ApiError(0, `The server cannot be reached (${why}).`);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (error) {
      data = text;
    }
  }
  if (!response.ok) {
    const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
    const detail = data && typeof data === "object" ? data.detail : null;
    throw new ApiError(response.status, describeDetail(data, response.status), retryAfter, detail);
  }
  return { status: response.status, data };
}

/** The login page for coming back to the current page afterwards. */
export function loginUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

/**
 * The logged-in user ({user, csrf_token}); remembers the CSRF token. Not logged in: goes to the login page
 * and never resolves, so the calling page stops there.
 */
export async function requireLogin() {
  try {
    const { data } = await api("GET", "/api/me");
    csrfToken = data.csrf_token;
    return data;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      location.assign(loginUrl());
      return new Promise(() => {});
    }
    throw error;
  }
}

/** Fetches the CSRF token again (after a 403 that may come from a session renewed in another tab). */
export async function refreshCsrf() {
  const { data } = await api("GET", "/api/me");
  csrfToken = data.csrf_token;
  return data;
}

/** Logs in; returns {user, csrf_token}. */
export async function login(username, password) {
  const { data } = await api("POST", "/api/login", { username, password });
  csrfToken = data.csrf_token;
  return data;
}

/** Ends the session and goes to the login page. */
export async function logout() {
  try {
    await api("POST", "/api/logout");
  } finally {
    csrfToken = null;
    location.assign("/login");
  }
}
