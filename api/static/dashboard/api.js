// The management API client: the member token lives in sessionStorage (this tab only, never in a URL) and goes
// out as `Authorization: Bearer`. Errors are the API's `{"error": {message, type, param, code}}` as ApiError.

const TOKEN = "aihub.dashboard.token";
const ACCOUNT = "aihub.dashboard.account";

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  setToken: (token) => sessionStorage.setItem(TOKEN, token),
  account: () => sessionStorage.getItem(ACCOUNT),
  setAccount: (id) => sessionStorage.setItem(ACCOUNT, id),
  clear() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(ACCOUNT);
  },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "error";
    this.param = error.param || null;
  }
}

let unauthorized = () => {};

/** `handler(error)` runs when the stored token is refused (401): the session is over. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

async function request(path, { method = "GET", body, token = session.token(), auth = true, blob = false } = {}) {
  const headers = { Accept: blob ? "*/*" : "application/json" };
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
    });
  } catch {
    throw new ApiError(0, { message: "The server could not be reached. Check your connection.", code: "network" });
  }
  if (!response.ok) {
    let error = { message: `The server answered ${response.status}.`, code: "http_error" };
    try {
      const parsed = await response.json();
      if (parsed && parsed.error) error = parsed.error;
    } catch { /* not JSON */ }
    const failure = new ApiError(response.status, error);
    if (response.status === 401 && auth && token && token === session.token()) unauthorized(failure);
    throw failure;
  }
  return blob ? response.blob() : response.json();
}

export const api = {
  get: (path, options) => request(path, options),
  post: (path, body, options) => request(path, { ...options, method: "POST", body }),
  blob: (path) => request(path, { blob: true }),
};

/** Fetches `path` with the bearer token and saves it as `filename` (a blob URL: the token never enters a URL). */
export async function download(path, filename) {
  const blob = await api.blob(path);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
