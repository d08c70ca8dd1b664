// ui.js: DOM building (always textContent, never innerHTML with data), formatting,
// and the shared widgets: toasts, the confirm dialog, bars, state chips, countdowns.

const SVG_NS = 'http://www.w3.org/2000/svg';

function applyAttrs(el, attrs, svg) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    else if (key === 'tid') el.setAttribute('data-testid', value);
    else if (key === 'text') el.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (!svg && (key === 'value' || key === 'checked' || key === 'selected' || key === 'disabled' || key === 'open'))
      el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h('div', {class, tid, onclick, ...}, ...children). Strings become text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs, false);
  append(el, children);
  return el;
}

/** An SVG element, the same way. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyAttrs(el, attrs, true);
  append(el, children);
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A small inline icon from the sprite-free set below (paths drawn in a 24×24 box). */
const ICONS = {
  fleet: 'M4 5h7v6H4zM13 5h7v6h-7zM4 13h7v6H4zM13 13h7v6h-7z',
  models: 'M12 3l8 4.5v9L12 21l-8-4.5v-9zM12 12l8-4.5M12 12v9M12 12L4 7.5',
  endpoints: 'M5 12h4M15 12h4M9 8h6v8H9zM2 12h3M19 12h3',
  requests: 'M4 6h16M4 12h16M4 18h10',
  usage: 'M4 20V10M10 20V4M16 20v-7M22 20H2',
  chat: 'M4 5h16v11H9l-5 4z',
  keys: 'M14 10a4 4 0 1 0-3.9 4H12v2h2v2h3v-3l-3.2-3.2A4 4 0 0 0 14 10zM8 10h.01',
  sun: 'M12 7a5 5 0 1 0 0 10 5 5 0 0 0 0-10zM12 1v2M12 21v2M4.2 4.2l1.4 1.4M18.4 18.4l1.4 1.4M1 12h2M21 12h2M4.2 19.8l1.4-1.4M18.4 5.6l1.4-1.4',
  moon: 'M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z',
  key: 'M15 7a4 4 0 1 1-3.9 4.9L4 19v-3h2v-2h2l1.2-1.2A4 4 0 0 1 15 7z',
  x: 'M6 6l12 12M18 6L6 18',
  copy: 'M9 9h11v11H9zM5 15H4V4h11v1',
  refresh: 'M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7',
  download: 'M12 4v11M7 10l5 5 5-5M5 20h14',
  plus: 'M12 5v14M5 12h14',
  stop: 'M7 7h10v10H7z',
  send: 'M4 12l16-8-6 16-2-7z',
  trash: 'M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13',
  menu: 'M4 7h16M4 12h16M4 17h16',
};

export function icon(name, cls = 'icon') {
  return s(
    'svg',
    { class: cls, viewBox: '0 0 24 24', 'aria-hidden': 'true', focusable: 'false' },
    s('path', { d: ICONS[name] || '' }),
  );
}

// --- formatting ------------------------------------------------------------------------

const nf = new Intl.NumberFormat(undefined);
const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

export function fmtInt(v) {
  return isNum(v) ? nf.format(Math.round(v)) : '—';
}

export function fmtNum(v, digits = 1) {
  if (!isNum(v)) return '—';
  return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(v);
}

/** 1234567 -> "1.2M" */
export function fmtCompact(v) {
  if (!isNum(v)) return '—';
  return new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 }).format(v);
}

export function fmtBytes(v) {
  if (!isNum(v)) return 'unknown';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = v;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n >= 100 ? Math.round(n) : nf1.format(n)} ${units[i]}`;
}

export function fmtGiB(v) {
  return isNum(v) ? nf1.format(v / 2 ** 30) : '—';
}

/** Seconds as "42s", "3m 20s", "1h 05m", "2d 4h". */
export function fmtDuration(sec) {
  if (!isNum(sec)) return '—';
  const t = Math.max(0, Math.round(sec));
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m ${String(t % 60).padStart(2, '0')}s`;
  if (t < 86400) return `${Math.floor(t / 3600)}h ${String(Math.floor((t % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(t / 86400)}d ${Math.floor((t % 86400) / 3600)}h`;
}

export function fmtMs(ms) {
  if (!isNum(ms)) return '—';
  if (ms < 1) return '<1 ms';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${nf1.format(ms / 1000)} s`;
}

/** Unix seconds -> "14:03:27" today, else "Mar 4 14:03". */
export function fmtTime(unixSeconds) {
  if (!isNum(unixSeconds)) return '—';
  const d = new Date(unixSeconds * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' })
    : d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
}

export function fmtDateTime(unixSeconds) {
  if (!isNum(unixSeconds)) return '—';
  return new Date(unixSeconds * 1000).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
  });
}

export function fmtAgo(unixSeconds) {
  if (!isNum(unixSeconds)) return '—';
  const sec = Date.now() / 1000 - unixSeconds;
  if (sec < 0) return `in ${fmtDuration(-sec)}`;
  if (sec < 5) return 'just now';
  return `${fmtDuration(sec)} ago`;
}

/** A cost: tiny local (energy) costs keep 2 significant digits. */
export function fmtCost(v, currency = 'USD') {
  if (!isNum(v)) return '—';
  const cur = currency || 'USD';
  const opts = { style: 'currency', currency: cur };
  if (v !== 0 && Math.abs(v) < 0.01) Object.assign(opts, { maximumSignificantDigits: 2 });
  else Object.assign(opts, { maximumFractionDigits: 2, minimumFractionDigits: 2 });
  try {
    return new Intl.NumberFormat(undefined, opts).format(v);
  } catch {
    return `${fmtNum(v, 4)} ${cur}`;
  }
}

export function shortId(id, n = 8) {
  return id ? String(id).slice(0, n) : '—';
}

// --- toasts ------------------------------------------------------------------------------

let toastRegion = null;

export function toast(message, kind = 'error', { timeout = 7000 } = {}) {
  if (!toastRegion) toastRegion = document.getElementById('toasts');
  const close = h('button', { class: 'toast-close icon-btn', type: 'button', 'aria-label': 'Dismiss' }, icon('x'));
  const el = h(
    'div',
    { class: ['toast', `toast-${kind}`], tid: 'toast', role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-dot', 'aria-hidden': 'true' }),
    h('div', { class: 'toast-text' }, String(message)),
    close,
  );
  const remove = () => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 180);
  };
  close.addEventListener('click', remove);
  toastRegion.append(el);
  while (toastRegion.children.length > 4) toastRegion.firstElementChild.remove();
  if (timeout) setTimeout(remove, timeout);
  return el;
}

/** Toast an error from an action; a missing token gets the hint on where to find it. */
export function toastError(exc, what) {
  if (exc && exc.name === 'AbortError') return;
  const msg = exc && exc.message ? exc.message : String(exc);
  const hint = exc && exc.needsToken ? ' Set the admin token (key icon in the header).' : '';
  toast(`${what ? `${what}: ` : ''}${msg}${hint}`, 'error');
}

// --- the confirm dialog -------------------------------------------------------------------

/**
 * Ask before doing something: resolves true (OK) or false (Cancel, Escape, backdrop).
 * `danger` styles the OK button red.
 */
export function confirmDialog({ title, body, ok = 'Confirm', danger = false }) {
  const dialog = document.getElementById('confirm-dialog');
  const okBtn = dialog.querySelector('[data-testid="confirm-ok"]');
  const cancelBtn = dialog.querySelector('[data-testid="confirm-cancel"]');
  fill(dialog.querySelector('.dialog-title'), title);
  const bodyEl = dialog.querySelector('.dialog-body');
  fill(bodyEl, ...(Array.isArray(body) ? body : [body]));
  okBtn.textContent = ok;
  okBtn.classList.toggle('btn-danger', danger);
  okBtn.classList.toggle('btn-primary', !danger);
  return new Promise((resolve) => {
    const done = (answer) => {
      okBtn.removeEventListener('click', onOk);
      cancelBtn.removeEventListener('click', onCancel);
      dialog.removeEventListener('close', onClose);
      dialog.removeEventListener('click', onBackdrop);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onOk = () => done(true);
    const onCancel = () => done(false);
    const onClose = () => done(false); // Escape
    const onBackdrop = (e) => {
      if (e.target === dialog) done(false);
    };
    okBtn.addEventListener('click', onOk);
    cancelBtn.addEventListener('click', onCancel);
    dialog.addEventListener('close', onClose);
    dialog.addEventListener('click', onBackdrop);
    dialog.showModal();
    (danger ? cancelBtn : okBtn).focus();
  });
}

// --- widgets ---------------------------------------------------------------------------------

/**
 * A labelled meter. `pct` null/undefined: "unknown" (never drawn as 0).
 * The fill width comes from a CSS custom property (allowed by the page's CSP).
 */
export function bar({ label, pct, detail, tid, unknownText = 'unknown', tone }) {
  const known = isNum(pct);
  const value = known ? Math.max(0, Math.min(100, pct)) : null;
  const track = h('div', { class: 'bar-track', 'aria-hidden': 'true' }, h('div', { class: 'bar-fill' }));
  if (known) track.style.setProperty('--pct', `${value.toFixed(1)}%`);
  const level = !known ? 'unknown' : tone || (value >= 90 ? 'crit' : value >= 70 ? 'warn' : 'ok');
  return h(
    'div',
    {
      class: ['bar', `bar-${level}`],
      tid,
      'data-value': known ? String(Math.round(value * 10) / 10) : 'unknown',
      role: 'meter',
      'aria-label': label,
      'aria-valuemin': '0',
      'aria-valuemax': '100',
      'aria-valuenow': known ? String(Math.round(value)) : undefined,
      'aria-valuetext': known ? `${Math.round(value)}%${detail ? `, ${detail}` : ''}` : unknownText,
    },
    h('div', { class: 'bar-head' },
      h('span', { class: 'bar-label' }, label),
      h('span', { class: 'bar-value' }, known ? `${Math.round(value)}%` : unknownText)),
    track,
    h('div', { class: 'bar-detail' }, detail || '\u00a0'),
  );
}

export const STATE_ORDER = ['hot', 'cooling', 'warming', 'fetching', 'unloading', 'failed', 'cold', 'cloud'];

const STATE_HINT = {
  hot: 'loaded, answering requests',
  cooling: 'loaded and idle: unloads when its TTL runs out',
  warming: 'starting its model server',
  fetching: 'copying the model file from a peer',
  unloading: 'stopping after its requests end',
  failed: 'could not start',
  cold: 'on disk, not loaded',
  cloud: 'a cloud model, reached through a node with its key',
};

/**
 * A model's state on a node: a coloured chip, with its countdown (cooling: when it
 * unloads; warming/fetching: the ETA) ticking from `deadline` (wall ms).
 */
export function stateChip(state, opts = {}) {
  const chip = h('span', { tid: opts.tid, 'data-node-id': opts.node || undefined });
  updateChip(chip, state, opts);
  return chip;
}

/** Bring a chip made by stateChip up to date in place (the element stays the same). */
export function updateChip(chip, state, { deadline, progress, pinned, cause, label } = {}) {
  const st = state || 'cold';
  const cls = ['chip', `st-${st}`, pinned ? 'pinned' : ''].filter(Boolean).join(' ');
  if (chip.getAttribute('class') !== cls) chip.setAttribute('class', cls);
  if (chip.getAttribute('data-state') !== st) chip.setAttribute('data-state', st);
  chip.title = [label, `${st}: ${STATE_HINT[st] || ''}`, pinned ? 'pinned' : '', cause ? `cause: ${cause}` : '']
    .filter(Boolean).join('\n');
  const parts = [h('span', { class: 'chip-dot', 'aria-hidden': 'true' })];
  if (label) parts.push(h('span', { class: 'chip-node' }, label));
  parts.push(h('span', { class: 'chip-state' }, st));
  if (pinned) parts.push(h('span', { class: 'chip-pin' }, 'pinned'));
  if (isNum(deadline) && (st === 'cooling' || st === 'warming' || st === 'fetching')) {
    parts.push(countdown(deadline, st === 'cooling' ? '' : '~', 'chip-time'));
  }
  if (isNum(progress) && (st === 'warming' || st === 'fetching')) {
    const p = h('span', { class: 'chip-progress', 'aria-hidden': 'true' });
    p.style.setProperty('--pct', `${Math.round(progress * 100)}%`);
    parts.push(p);
  }
  chip.replaceChildren(...parts);
  return chip;
}

// --- countdowns: one 1 s tick updates every [data-deadline] on the page -------------------------

export function countdown(deadlineMs, prefix = '', cls = 'countdown') {
  const el = h('span', { class: cls, 'data-deadline': String(deadlineMs), 'data-prefix': prefix });
  el.textContent = countdownText(deadlineMs, prefix);
  return el;
}

function countdownText(deadlineMs, prefix) {
  const left = (deadlineMs - Date.now()) / 1000;
  if (left <= 0) return `${prefix}0s`;
  return `${prefix}${fmtClock(left)}`;
}

/** Seconds as m:ss or h:mm:ss. */
export function fmtClock(sec) {
  const t = Math.max(0, Math.round(sec));
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = String(t % 60).padStart(2, '0');
  return hh ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

setInterval(() => {
  for (const el of document.querySelectorAll('[data-deadline]')) {
    el.textContent = countdownText(Number(el.dataset.deadline), el.dataset.prefix || '');
  }
}, 1000);

// --- lists that update in place ------------------------------------------------------------------

/**
 * Keep `container`'s children in step with `items`: a child whose data did not change
 * is kept as it is (no flicker, focus kept), a changed one is replaced (focus carried
 * over to the same control), the order follows `items`.
 */
export function patchList(container, items, keyOf, render, sigOf = (x) => JSON.stringify(x)) {
  const old = new Map();
  for (const child of container.children) if (child.dataset.key !== undefined) old.set(child.dataset.key, child);
  const wanted = [];
  for (const item of items) {
    const key = String(keyOf(item));
    const sig = sigOf(item);
    let el = old.get(key);
    if (!el || el._sig !== sig) {
      const fresh = render(item);
      fresh.dataset.key = key;
      fresh._sig = sig;
      if (el) {
        const focused = el.contains(document.activeElement) ? document.activeElement : null;
        el.replaceWith(fresh);
        if (focused && focused.dataset.testid) {
          fresh.querySelector(`[data-testid="${focused.dataset.testid}"]`)?.focus();
        }
      }
      el = fresh;
    }
    old.delete(key);
    wanted.push(el);
  }
  for (const el of old.values()) el.remove();
  // place in order, moving only what is out of place
  let cursor = container.firstElementChild;
  for (const el of wanted) {
    while (cursor && cursor.dataset.key === undefined) cursor = cursor.nextElementSibling;
    if (el !== cursor) container.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
  }
}

// --- page states -----------------------------------------------------------------------------------

export function emptyState(title, detail) {
  return h('div', { class: 'empty' }, h('div', { class: 'empty-title' }, title), detail ? h('div', { class: 'empty-detail' }, detail) : null);
}

/** The inline error of a page whose data did not load. A missing token says where to get one. */
export function pageError(exc, what = 'This page') {
  const needsToken = !exc || exc.needsToken;
  const box = h('div', { class: ['page-error', needsToken && 'needs-token'], tid: 'page-error', role: 'alert' });
  if (needsToken) {
    const invalid = exc && exc.status === 401 && exc.code && exc.code !== 'unauthorized';
    box.append(
      h('div', { class: 'page-error-title' }, invalid ? 'The admin token was refused' : `${what} needs the admin token`),
      h('p', {},
        'Open the address that ',
        h('code', {}, 'meshllm dashboard'),
        ' prints on this machine (it carries the token), or paste the token from ',
        h('code', {}, '<state-dir>/admin_token'),
        '.'),
      h('div', { class: 'page-error-actions' },
        h('button', { class: 'btn btn-primary', type: 'button', 'data-action': 'open-token' }, icon('key'), 'Enter admin token')),
    );
    if (exc && exc.message && exc.status) box.append(h('p', { class: 'muted small' }, `The node said: ${exc.message}`));
  } else {
    box.append(
      h('div', { class: 'page-error-title' }, `${what} could not be loaded`),
      h('p', {}, exc.message || String(exc)),
      h('div', { class: 'page-error-actions' },
        h('button', { class: 'btn', type: 'button', 'data-action': 'retry' }, icon('refresh'), 'Retry')),
    );
  }
  return box;
}

// --- files and the clipboard ---------------------------------------------------------------------

/** Save a Blob as a file (an <a download> on an object URL: allowed by the page's CSP). */
export function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, class: 'sr-only' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h('textarea', { class: 'sr-only', readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

/** Run fn at most once per `ms`, the last call winning (trailing). */
export function debounce(fn, ms) {
  let t = 0;
  const wrapped = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(t);
  return wrapped;
}
