// Requests to this meshdns only (relative paths). The token is sent as X-Consul-Token, never in a URL.

const TOKEN_KEY = "meshdns-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

export async function request(method, path, {body, signal, accept = []} = {}) {
  const headers = {};
  const secret = token();
  if (secret) headers["X-Consul-Token"] = secret;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store", credentials: "same-origin", referrerPolicy: "no-referrer",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok && !accept.includes(response.status)) {
    throw new ApiError(response.status, text.trim() || response.statusText);
  }
  return {status: response.status, text, data: text ? JSON.parse(text) : null,
          index: Number(response.headers.get("X-Consul-Index") || 0)};
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

function withQuery(path, extra) {
  return path + (path.includes("?") ? "&" : "?") + extra;
}

// Follow a read: the first answer at once, then each change. `indexOf` reads the index to wait on
// (Consul's X-Consul-Index by default; ?index=N&wait= parks the request until it moves).
export async function follow(path, onData, signal, {onError, indexOf = (r) => r.index} = {}) {
  let index = 0;
  let last = null;
  let delay = 1000;
  while (!signal.aborted) {
    try {
      const reply = await request("GET", index ? withQuery(path, `index=${index}&wait=5m`) : path, {signal});
      delay = 1000;
      const next = indexOf(reply);
      index = next > 0 ? next : 0;
      if (reply.text !== last) {
        last = reply.text;
        onError?.(null);
        onData(reply.data);
      }
    } catch (err) {
      if (signal.aborted) return;
      onError?.(err);
      index = 0;
      await pause(delay, signal);
      delay = Math.min(delay * 2, 30000);
    }
  }
}

// Reads that have no index to wait on (/readyz, the topology): again every `ms` while the view is open.
export async function every(path, ms, onData, signal, {onError, accept = []} = {}) {
  while (!signal.aborted) {
    try {
      const reply = await request("GET", path, {signal, accept});
      onError?.(null);
      onData(reply.data, reply.status);
    } catch (err) {
      if (signal.aborted) return;
      onError?.(err);
    }
    await pause(ms, signal);
  }
}

export function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 403) return `Refused (403): ${err.message}`;
    return `${err.status}: ${err.message}`;
  }
  return `The server did not answer: ${err.message}`;
}
