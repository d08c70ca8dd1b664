// api.js: everything that talks to the node. fetch with the admin token, the
// OpenAI-shaped errors, a Server-Sent Events parser over a fetch body, and the live
// event stream (/api/events) with reconnection.

const TOKEN_KEY = 'meshllm.adminToken';
const tokenListeners = new Set();

// --- the admin token (kept for this tab only) -------------------------------------

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(token) {
  const value = (token || '').trim();
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage refused (private mode): the token lasts until reload */
  }
  for (const fn of tokenListeners) fn(value);
}

export function onTokenChange(fn) {
  tokenListeners.add(fn);
  return () => tokenListeners.delete(fn);
}

/** Read `#token=…[&page=…]` from the URL, keep the token, and take it out of the URL. */
export function adoptTokenFromUrl() {
  const hash = location.hash.replace(/^#/, '');
  if (!/^token=|&token=/.test(hash) || hash.startsWith('/')) return;
  const params = new URLSearchParams(hash);
  const token = params.get('token');
  const page = (params.get('page') || '').replace(/^\/+/, '');
  history.replaceState(null, '', `${location.pathname}${location.search}#/${page || 'fleet'}`);
  if (token) setToken(token);
}

export function authHeaders(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

// --- errors ---------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(message, status = 0, code = '') {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  /** The admin token is missing or wrong (or the key lacks the admin scope). */
  get needsToken() {
    return this.status === 401 || this.code === 'insufficient_scope';
  }
}

/** The error a failed response carries: OpenAI's {"error": {...}}, Ollama's {"error": "…"}. */
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText || 'error'}`;
  let code = '';
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      const err = body && body.error;
      if (err && typeof err === 'object') {
        message = String(err.message || message);
        code = String(err.code || err.type || '');
      } else if (typeof err === 'string') {
        message = err;
      }
    } catch {
      if (text.trim()) message = text.trim().slice(0, 300);
    }
  } catch {
    /* no body */
  }
  return new ApiError(message, response.status, code);
}

// --- requests ---------------------------------------------------------------------------

/**
 * Call the node: JSON in and out. `body` (an object) makes it JSON; every POST sends
 * Content-Type: application/json (the node refuses anything else with 415).
 */
export async function api(path, { method = 'GET', body, signal, headers = {} } = {}) {
  const init = { method, signal, headers: authHeaders(headers), cache: 'no-store' };
  if (body !== undefined || method === 'POST') {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc && exc.name === 'AbortError') throw exc;
    throw new ApiError('the node does not answer (is it running?)', 0, 'unreachable');
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('json') ? response.json() : response.text();
}

/** A query string of the non-empty values of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && String(v).trim() !== '') q.set(k, String(v).trim());
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

// --- Server-Sent Events over a fetch body ------------------------------------------------

/**
 * Parse a text/event-stream body. Yields {event, data, id} for each event and
 * {comment} for each comment line (": ping", ": loading …").
 */
export async function* readSSE(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data = [];
  let id = '';
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = done ? '' : lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (data.length) yield { event: event || 'message', data: data.join('\n'), id };
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) {
          yield { comment: line.slice(1).trim() };
          continue;
        }
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
        else if (field === 'id') id = val;
      }
      if (done) break;
    }
    if (data.length) yield { event: event || 'message', data: data.join('\n'), id };
  } finally {
    signal?.removeEventListener('abort', onAbort);
    reader.releaseLock?.();
  }
}

// --- the live event stream ----------------------------------------------------------------

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const QUIET_MS = 40000; // > 2 × the node's 15 s heartbeat

/**
 * /api/events, kept open: `on(type, fn)` for each event type (snapshot, model_state,
 * node_joined, node_left, request), `onState(fn)` for connecting / live / offline.
 * It reconnects with backoff when the stream ends (an overflow ends it too: the next
 * connection starts with a fresh snapshot), and at once when the token changes (the
 * token decides whether `request` events come).
 */
export class EventStream {
  constructor(path = '/api/events') {
    this.path = path;
    this.state = 'connecting';
    this.handlers = new Map();
    this.stateHandlers = new Set();
    this.attempt = 0;
    this.controller = null;
    this.timer = 0;
    this.stopped = true;
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  onState(fn) {
    this.stateHandlers.add(fn);
    fn(this.state);
    return () => this.stateHandlers.delete(fn);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    for (const fn of this.stateHandlers) fn(state);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.controller?.abort();
  }

  /** Drop the connection and open a new one now (e.g. the token changed). */
  restart() {
    clearTimeout(this.timer);
    this.controller?.abort();
    this.attempt = 0;
    if (!this.stopped) this.connect();
  }

  emit(type, payload) {
    for (const fn of this.handlers.get(type) || []) {
      try {
        fn(payload);
      } catch (exc) {
        console.error('event handler failed', exc);
      }
    }
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    this.setState('connecting');
    let retryAfter = 0;
    // The node pings every 15 s of quiet: a stream (or a connection attempt) silent for
    // much longer is dead (half-open, a frozen node): drop it and reconnect.
    let watchdog = 0;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(new DOMException('stream went quiet', 'TimeoutError')), QUIET_MS);
    };
    arm();
    controller.signal.addEventListener('abort', () => clearTimeout(watchdog), { once: true });
    try {
      const response = await fetch(this.path, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: controller.signal,
        cache: 'no-store',
      });
      if (!response.ok || !response.body) {
        retryAfter = Number(response.headers.get('Retry-After')) * 1000 || 0;
        throw await errorOf(response);
      }
      for await (const msg of readSSE(response.body, controller.signal)) {
        arm();
        if (msg.comment !== undefined) continue; // ": ping"
        let data;
        try {
          data = JSON.parse(msg.data);
        } catch {
          continue;
        }
        if (msg.event === 'snapshot') {
          this.attempt = 0;
          this.setState('live');
        }
        if (msg.event === 'overflow') break; // fell behind: reconnect for a fresh snapshot
        this.emit(msg.event, data);
      }
    } catch (exc) {
      this.lastError = exc;
    }
    const quiet = controller.signal.aborted && controller.signal.reason?.name === 'TimeoutError';
    // restart() or stop() aborted it: nothing to schedule (restart connects itself)
    if ((controller.signal.aborted && !quiet) || this.stopped || this.controller !== controller) return;
    clearTimeout(watchdog);
    controller.abort();
    this.setState('offline');
    const wait = Math.max(retryAfter, BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)]);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), wait * (0.8 + Math.random() * 0.4));
  }
}
