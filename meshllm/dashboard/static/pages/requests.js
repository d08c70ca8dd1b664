// pages/requests.js: the mesh-wide request history: filters, paging, sortable columns,
// a detail panel, JSON and CSV export, and a live tail of this node's `request` events.

import { api, authHeaders, errorOf, getToken, query, ApiError } from '../api.js';
import {
  h, fill, icon, patchList, pageError, emptyState, toast, toastError, downloadBlob, copyText,
  fmtTime, fmtDateTime, fmtAgo, fmtMs, fmtInt, fmtNum, shortId, isNum,
} from '../ui.js';

const FILTERS = ['model', 'status', 'since', 'search', 'kind', 'node', 'key'];
const COLUMNS = [
  { field: 'time', label: 'Time', cls: 'w-time' },
  { field: 'model', label: 'Model', cls: 'w-model' },
  { field: 'status', label: 'Status', cls: 'w-status' },
  { field: 'latency_ms', label: 'Latency', cls: 'w-num', num: true },
  { field: 'ttft_ms', label: 'TTFT', cls: 'w-num', num: true, hideSm: true },
  { field: 'tokens_in', label: 'In', cls: 'w-tok', num: true, hideSm: true },
  { field: 'tokens_out', label: 'Out', cls: 'w-tok', num: true },
  { field: 'key_id', label: 'Key', cls: 'w-key', hideSm: true },
  { field: 'route', label: 'Route', cls: 'w-route', sortable: false, hideSm: true },
];
const MAX_LIVE_ROWS = 1000;

// kept while the tab lives: coming back to the page finds it as it was left
const state = {
  filters: { model: '', status: '', since: '24h', search: '', kind: '', node: '', key: '' },
  limit: '100',
  sort: { field: 'time', dir: 'desc' },
  cursors: [null],
  page: 0,
  live: false,
};

export function mount(root, { store }) {
  let rows = [];
  let nextCursor = null;
  let selected = null;
  let loading = false;
  const fresh = new Set(); // request ids that came live (highlighted once)

  // --- filter bar ---
  const inputs = {};
  const lists = {
    model: h('datalist', { id: 'dl-model' }),
    status: h('datalist', { id: 'dl-status' }, ['200', 'ok', 'error', '4xx', '5xx', '429', '499', '503'].map((v) => h('option', { value: v }))),
    since: h('datalist', { id: 'dl-since' }, ['15m', '1h', '6h', '24h', '7d'].map((v) => h('option', { value: v }))),
    node: h('datalist', { id: 'dl-node' }),
  };
  const mk = (name, label, placeholder, cls) => {
    const el = h('input', {
      class: 'input input-sm', type: name === 'search' ? 'search' : 'text', tid: `history-${name}`, id: `history-${name}`,
      placeholder, value: state.filters[name], autocomplete: 'off', spellcheck: 'false', list: lists[name] ? lists[name].id : undefined,
    });
    inputs[name] = el;
    return h('label', { class: ['field', 'field-sm', cls] }, h('span', { class: 'field-label' }, label), el);
  };
  const kind = h('select', { class: 'input input-sm', tid: 'history-kind', id: 'history-kind' },
    [['', 'any'], ['local', 'local'], ['routed', 'routed'], ['served', 'served']].map(([v, t]) => h('option', { value: v, selected: state.filters.kind === v }, t)));
  inputs.kind = kind;
  const limit = h('select', { class: 'input input-sm', tid: 'history-limit', id: 'history-limit' },
    ['50', '100', '250', '1000'].map((v) => h('option', { value: v, selected: state.limit === v }, v)));
  const apply = h('button', { class: 'btn btn-primary btn-sm', type: 'submit', tid: 'history-apply' }, 'Apply');
  const reset = h('button', { class: 'btn btn-ghost btn-sm', type: 'button', tid: 'history-reset' }, 'Reset');
  const filterForm = h('form', { class: 'filters card', 'aria-label': 'Filter the history', novalidate: true },
    mk('search', 'Search', 'model, path, error, request id', 'grow'),
    mk('model', 'Model', 'any'),
    mk('status', 'Status', '200, 4xx, error'),
    mk('since', 'Since', '24h'),
    mk('node', 'Node', 'any'),
    mk('key', 'Key', 'key id'),
    h('label', { class: 'field field-sm' }, h('span', { class: 'field-label' }, 'Kind'), kind),
    h('label', { class: 'field field-sm' }, h('span', { class: 'field-label' }, 'Rows'), limit),
    h('div', { class: 'filters-actions' }, reset, apply),
    Object.values(lists));

  // --- toolbar ---
  const liveBtn = h('button', { class: 'btn btn-sm toggle', type: 'button', tid: 'history-live', 'aria-pressed': String(state.live) },
    h('span', { class: 'live-dot', 'aria-hidden': 'true' }), 'Live tail');
  const exportJson = h('button', { class: 'btn btn-sm', type: 'button', tid: 'export-json' }, icon('download'), 'JSON');
  const exportCsv = h('button', { class: 'btn btn-sm', type: 'button', tid: 'export-csv' }, icon('download'), 'CSV');
  const refreshBtn = h('button', { class: 'btn btn-sm', type: 'button', tid: 'history-refresh', 'aria-label': 'Reload' }, icon('refresh'));

  // --- table ---
  const headRow = h('tr');
  const sortButtons = {};
  for (const c of COLUMNS) {
    const th = h('th', { scope: 'col', class: [c.cls, c.num && 'num', c.hideSm && 'hide-narrow'] });
    if (c.sortable === false) th.append(c.label);
    else {
      const btn = h('button', { class: 'sort-btn', type: 'button', tid: `sort-${c.field}` }, h('span', {}, c.label), h('span', { class: 'sort-arrow', 'aria-hidden': 'true' }));
      btn.addEventListener('click', () => {
        if (state.sort.field === c.field) state.sort.dir = state.sort.dir === 'asc' ? 'desc' : 'asc';
        else state.sort = { field: c.field, dir: c.field === 'model' || c.field === 'key_id' ? 'asc' : 'desc' };
        drawRows();
      });
      sortButtons[c.field] = { btn, th };
      th.append(btn);
    }
    headRow.append(th);
  }
  const body = h('tbody');
  const table = h('table', { class: 'table history-table' },
    h('thead', {}, headRow), body);
  const errorBox = h('div');
  const banner = h('div');
  const pageInfo = h('span', { class: 'muted small' }, '\u00a0');
  const prev = h('button', { class: 'btn btn-sm', type: 'button', tid: 'history-prev' }, '← Newer');
  const next = h('button', { class: 'btn btn-sm', type: 'button', tid: 'history-next' }, 'Older →');
  const detail = h('aside', { class: 'detail', tid: 'history-detail', 'aria-label': 'Request detail', hidden: true, tabindex: '-1' });

  // the table and, beside it (below it on a phone), the detail of the row picked
  const layout = h('div', { class: 'history-layout' },
    h('div', { class: 'history-main' },
      h('div', { class: 'card table-card history-card' }, h('div', { class: 'table-scroll' }, table)),
      h('div', { class: 'table-foot pager' }, pageInfo, h('div', { class: 'pager-btns' }, prev, next))),
    detail);
  root.append(
    h('header', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'page-title' }, 'Requests'),
        h('p', { class: 'page-sub' }, 'Every request the mesh\'s nodes answered or routed, newest first, one row a request.')),
      h('div', { class: 'toolbar' }, liveBtn, exportJson, exportCsv, refreshBtn)),
    filterForm,
    errorBox,
    banner,
    layout,
  );

  // --- behaviour ---
  const readFilters = () => {
    for (const f of FILTERS) state.filters[f] = inputs[f].value.trim();
    state.limit = limit.value;
  };
  const params = (extra = {}) => ({ ...state.filters, limit: state.limit, ...extra });

  const sortRows = (list) => {
    const { field, dir } = state.sort;
    const sign = dir === 'asc' ? 1 : -1;
    return [...list].sort((a, b) => {
      const x = a[field];
      const y = b[field];
      if (x === y) return (b.time - a.time) || 0;
      if (x === null || x === undefined || x === '') return 1;
      if (y === null || y === undefined || y === '') return -1;
      return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * sign;
    });
  };

  const drawRows = () => {
    for (const [field, { btn, th }] of Object.entries(sortButtons)) {
      const on = state.sort.field === field;
      th.setAttribute('aria-sort', on ? (state.sort.dir === 'asc' ? 'ascending' : 'descending') : 'none');
      btn.classList.toggle('sorted', on);
      btn.querySelector('.sort-arrow').textContent = on ? (state.sort.dir === 'asc' ? '▲' : '▼') : '';
    }
    if (!rows.length) {
      fill(body, h('tr', { class: 'empty-row' }, h('td', { colspan: String(COLUMNS.length) },
        emptyState(loading ? 'Loading…' : 'No requests match', loading ? '' : 'Requests appear here as nodes answer them. Widen the period or clear the filters.'))));
    } else {
      if (body.querySelector('.empty-row')) body.replaceChildren();
      patchList(body, sortRows(rows), (r) => r.request_id,
        (r) => historyRow(r, r.request_id === selected?.request_id, fresh.has(r.request_id), openDetail, store),
        (r) => JSON.stringify([r, r.request_id === selected?.request_id]));
      fresh.clear();
    }
    liveBtn.disabled = loading; // the tail starts from a loaded page
    prev.disabled = state.page === 0 || loading;
    next.disabled = !nextCursor || loading;
    const from = state.page * Number(state.limit);
    pageInfo.textContent = rows.length
      ? `Page ${state.page + 1} · rows ${fmtInt(from + 1)}–${fmtInt(from + rows.length)}${nextCursor ? '' : ' · the oldest'}`
      : '\u00a0';
  };

  let seq = 0;
  const load = async () => {
    layout.hidden = !getToken();
    if (!getToken()) {
      fill(errorBox, pageError(new ApiError('', 401, 'unauthorized'), 'The request history'));
      rows = [];
      nextCursor = null;
      drawRows();
      return;
    }
    const bad = filterProblem(state.filters);
    if (bad) {
      fill(errorBox, h('div', { class: 'banner error', tid: 'page-error', role: 'alert' }, bad));
      rows = [];
      nextCursor = null;
      drawRows();
      return;
    }
    const mine = ++seq;
    loading = true;
    drawRows();
    try {
      const answer = await api(`/api/history${query(params({ cursor: state.cursors[state.page] }))}`);
      if (mine !== seq) return;
      rows = answer.rows || [];
      nextCursor = answer.next_cursor || null;
      fill(errorBox);
      const missing = Object.entries(answer.missing || {});
      fill(banner, missing.length
        ? h('div', { class: 'banner warn' }, `Not in: ${missing.map(([id, why]) => `${shortId(id)} (${why})`).join(', ')}. Their rows are missing from this page.`)
        : '');
    } catch (exc) {
      if (mine !== seq) return;
      rows = [];
      nextCursor = null;
      fill(errorBox, exc.status === 400 ? h('div', { class: 'banner error', tid: 'page-error', role: 'alert' }, `The node refused the filter: ${exc.message}`) : pageError(exc, 'The request history'));
    } finally {
      if (mine === seq) {
        loading = false;
        drawRows();
      }
    }
  };

  const openDetail = (row) => {
    selected = row;
    for (const tr of body.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    body.querySelector(`tr[data-request-id="${CSS.escape(row.request_id)}"]`)?.classList.add('selected');
    renderDetail(detail, row, closeDetail);
    detail.hidden = false;
    layout.classList.add('has-detail');
    detail.focus({ preventScroll: true });
    if (window.matchMedia('(max-width: 1080px)').matches) detail.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  };
  const closeDetail = () => {
    const id = selected?.request_id;
    selected = null;
    detail.hidden = true;
    layout.classList.remove('has-detail');
    for (const tr of body.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    if (id) body.querySelector(`tr[data-request-id="${CSS.escape(id)}"] .row-open`)?.focus();
  };
  const onKey = (e) => {
    if (e.key === 'Escape' && !detail.hidden && !document.querySelector('dialog[open]')) closeDetail();
  };
  document.addEventListener('keydown', onKey);

  filterForm.addEventListener('submit', (e) => {
    e.preventDefault();
    readFilters();
    state.cursors = [null];
    state.page = 0;
    load();
  });
  kind.addEventListener('change', () => filterForm.requestSubmit());
  limit.addEventListener('change', () => filterForm.requestSubmit());
  reset.addEventListener('click', () => {
    for (const f of FILTERS) inputs[f].value = f === 'since' ? '24h' : '';
    filterForm.requestSubmit();
  });
  next.addEventListener('click', () => {
    if (!nextCursor) return;
    state.cursors[state.page + 1] = nextCursor;
    state.page += 1;
    load();
  });
  prev.addEventListener('click', () => {
    if (state.page === 0) return;
    state.page -= 1;
    load();
  });
  refreshBtn.addEventListener('click', load);

  exportJson.addEventListener('click', async () => {
    readFilters();
    exportJson.disabled = true;
    try {
      const answer = await api(`/api/history${query(params({ limit: 1000 }))}`);
      const doc = { exported_at: new Date().toISOString(), filter: params({ limit: 1000 }), ...answer };
      downloadBlob(new Blob([JSON.stringify(doc, null, 2)], { type: 'application/json' }), `meshllm-history-${stamp()}.json`);
    } catch (exc) {
      toastError(exc, 'Export');
    } finally {
      exportJson.disabled = false;
    }
  });
  exportCsv.addEventListener('click', async () => {
    readFilters();
    exportCsv.disabled = true;
    try {
      const response = await fetch(`/api/history${query(params({ limit: 1000, format: 'csv' }))}`, { headers: authHeaders(), cache: 'no-store' });
      if (!response.ok) throw await errorOf(response);
      const blob = await response.blob();
      downloadBlob(new Blob([blob], { type: 'text/csv' }), `meshllm-history-${stamp()}.csv`);
    } catch (exc) {
      toastError(exc, 'Export');
    } finally {
      exportCsv.disabled = false;
    }
  });

  // live tail: rows this node records, as they are recorded
  const setLive = (on) => {
    state.live = on;
    liveBtn.setAttribute('aria-pressed', String(on));
    liveBtn.classList.toggle('on', on);
  };
  liveBtn.addEventListener('click', () => {
    if (!getToken()) {
      toast('The live tail needs the admin token', 'error', { timeout: 4000 });
      return;
    }
    setLive(!state.live);
    if (state.live && state.page !== 0) {
      state.page = 0;
      load();
    }
  });
  setLive(state.live && Boolean(getToken()));
  const offRequest = store.subscribe('request', (row) => {
    if (!state.live || state.page !== 0 || !row || !row.request_id) return;
    if (!matches(row, state.filters)) return;
    const i = rows.findIndex((r) => r.request_id === row.request_id);
    if (i >= 0) rows[i] = { ...rows[i], ...row };
    else {
      rows = [row, ...rows].slice(0, MAX_LIVE_ROWS);
      fresh.add(row.request_id);
    }
    drawRows();
  });

  // model and node suggestions
  const fillLists = () => {
    fill(lists.model, (store.get('models') || []).map((m) => h('option', { value: m.model })));
    const st = store.get('status');
    if (st) fill(lists.node, [st, ...(st.peers || [])].map((n) => h('option', { value: n.node_id }, n.role)));
  };
  const offs = [store.subscribe('models', fillLists), store.subscribe('status', fillLists), offRequest];
  store.ensure('models');
  store.ensure('status');
  fillLists();
  load();

  return () => {
    document.removeEventListener('keydown', onKey);
    offs.forEach((off) => off());
  };
}

/** What is wrong with a filter the node would refuse (checked here: no 400 round trip). */
function filterProblem(f) {
  if (f.status && !/^([1-5]\d\d|[1-5]xx|error|ok)$/i.test(f.status)) {
    return `Status "${f.status}": use a code (404), a class (5xx), "error" or "ok".`;
  }
  const time = /^(\d+(\.\d*)?|\d{4}-\d{2}-\d{2}.*|([0-9.]+(ms|s|m|h|d|w))+)$/i;
  if (f.since && !time.test(f.since)) {
    return `Since "${f.since}": use a duration ago (15m, 24h, 7d), Unix seconds or an ISO date.`;
  }
  return '';
}

/** Whether a live row passes the filter the table shows (the node's own rules, client-side). */
function matches(row, f) {
  if (f.model && row.model !== f.model) return false;
  if (f.kind && row.kind !== f.kind) return false;
  if (f.node && row.entry_node !== f.node && row.serving_node !== f.node) return false;
  if (f.key && row.key_id !== f.key) return false;
  if (f.status) {
    const st = row.status;
    const spec = f.status.toLowerCase();
    if (/^[1-5]\d\d$/.test(spec) && st !== Number(spec)) return false;
    if (/^[1-5]xx$/.test(spec) && Math.floor(st / 100) !== Number(spec[0])) return false;
    if (spec === 'error' && st < 400) return false;
    if (spec === 'ok' && st >= 400) return false;
  }
  if (f.search) {
    const q = f.search.toLowerCase();
    const hay = [row.model, row.path, row.error, row.request_id].join('\u0000').toLowerCase();
    if (!hay.includes(q)) return false;
  }
  return true;
}

function stamp() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

function statusBadge(status, error) {
  const cls = status === 499 ? 'gone' : status >= 500 ? 'err' : status >= 400 ? 'warn' : 'ok';
  return h('span', { class: ['status', `status-${cls}`], title: error || (status === 499 ? 'the client went away first' : '') }, String(status));
}

function keyLabel(id) {
  if (!id) return h('span', { class: 'muted' }, 'none');
  if (id === 'admin-token') return h('span', { class: 'badge key-badge' }, 'admin token');
  return h('span', { class: 'mono' }, id);
}

function historyRow(r, isSelected, isFresh, openDetail, store) {
  const selfId = store.get('status')?.node_id;
  const nodeText = (id) => (!id ? '—' : id === selfId ? 'this' : shortId(id, 6));
  const open = h('button', { class: 'row-open link-btn', type: 'button', title: fmtDateTime(r.time), 'aria-label': `Details of request ${r.request_id}` }, fmtTime(r.time));
  const tr = h('tr', {
    tid: 'history-row', 'data-request-id': r.request_id,
    class: ['clickable', isSelected && 'selected', isFresh && 'fresh', r.status >= 400 && 'is-error'],
  },
  h('td', { class: 'time-cell' }, open),
  h('td', { class: 'ellipsis', title: `${r.model}\n${r.path}` }, r.model || h('span', { class: 'muted' }, '—'), r.stream ? h('span', { class: 'badge tiny', title: 'streamed' }, 'SSE') : null),
  h('td', {}, statusBadge(r.status, r.error)),
  h('td', { class: 'num' }, fmtMs(r.latency_ms)),
  h('td', { class: 'num hide-narrow' }, fmtMs(r.ttft_ms)),
  h('td', { class: 'num hide-narrow' }, fmtInt(r.tokens_in)),
  h('td', { class: 'num' }, fmtInt(r.tokens_out)),
  h('td', { class: 'ellipsis hide-narrow' }, keyLabel(r.key_id)),
  h('td', { class: 'ellipsis hide-narrow route', title: `${r.kind}: ${r.entry_node || '—'} → ${r.serving_node || 'none'}` },
    h('span', { class: ['badge', 'tiny', `kind-${r.kind}`] }, r.kind), ' ',
    h('span', { class: 'mono small' }, r.kind === 'local' ? nodeText(r.entry_node) : `${nodeText(r.entry_node)} → ${nodeText(r.serving_node)}`)));
  tr.addEventListener('click', (e) => {
    if (e.target.closest('button') && e.target.closest('button') !== open) return;
    openDetail(r);
  });
  return tr;
}

function renderDetail(panel, r, close) {
  const closeBtn = h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close the detail', tid: 'history-detail-close' }, icon('x'));
  closeBtn.addEventListener('click', close);
  const copyBtn = h('button', { class: 'btn btn-sm', type: 'button' }, icon('copy'), 'Copy JSON');
  copyBtn.addEventListener('click', async () => {
    toast((await copyText(JSON.stringify(r, null, 2))) ? 'Copied the row' : 'Copy failed', 'ok', { timeout: 2000 });
  });
  const rowsOf = [
    ['Request id', h('span', { class: 'mono' }, r.request_id)],
    ['Time', `${fmtDateTime(r.time)} (${fmtAgo(r.time)})`],
    ['Model', r.model || '—'],
    ['Path', h('span', { class: 'mono' }, r.path || '—')],
    ['Status', statusBadge(r.status, r.error)],
    ['Kind', r.kind],
    ['Entry node', h('span', { class: 'mono' }, r.entry_node || '—')],
    ['Serving node', h('span', { class: 'mono' }, r.serving_node || 'none')],
    ['Seen by', h('span', { class: 'mono' }, (r.seen_by || []).join(', ') || '—')],
    ['Key', keyLabel(r.key_id)],
    ['Latency', fmtMs(r.latency_ms)],
    ['Time to first token', fmtMs(r.ttft_ms)],
    ['Tokens in / out', `${fmtInt(r.tokens_in)} / ${fmtInt(r.tokens_out)}`],
    ['Tokens/s', isNum(r.latency_ms) && r.tokens_out && r.latency_ms > (r.ttft_ms || 0)
      ? fmtNum((r.tokens_out * 1000) / (r.latency_ms - (r.ttft_ms || 0)), 1) : '—'],
    ['Streamed', r.stream ? 'yes' : 'no'],
    ['Energy', isNum(r.energy_j) ? `${fmtNum(r.energy_j, 1)} J` : 'not known'],
  ];
  const known = new Set(['request_id', 'time', 'model', 'path', 'status', 'kind', 'entry_node', 'serving_node', 'seen_by', 'key_id', 'latency_ms', 'ttft_ms', 'tokens_in', 'tokens_out', 'stream', 'energy_j', 'error', 'prompt', 'answer']);
  for (const [k, v] of Object.entries(r)) if (!known.has(k)) rowsOf.push([k, typeof v === 'object' ? JSON.stringify(v) : String(v)]);
  fill(panel,
    h('div', { class: 'detail-head' },
      h('div', {}, h('div', { class: 'detail-kicker muted small' }, 'Request'), h('h2', { class: 'detail-title mono' }, r.request_id)),
      h('div', { class: 'detail-actions' }, copyBtn, closeBtn)),
    r.error ? h('div', { class: 'banner error' }, r.error) : null,
    h('dl', { class: 'detail-list' }, rowsOf.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    textBlock('Prompt', r.prompt, true),
    textBlock('Answer', r.answer, false),
    r.prompt === null && r.answer === null ? h('p', { class: 'muted small' }, 'No prompt or answer kept: nodes keep them only with --log-prompts, and only on the node that logged them.') : null,
  );
}

function textBlock(title, text, json) {
  if (text === null || text === undefined || text === '') return null;
  let shown = String(text);
  if (json) {
    try {
      shown = JSON.stringify(JSON.parse(shown), null, 2);
    } catch {
      /* as it is */
    }
  }
  return h('section', { class: 'detail-block' }, h('h3', { class: 'detail-sub' }, title), h('pre', { class: 'pre' }, shown));
}
