// pages/endpoints.js: the OpenAI-compatible and Ollama servers the nodes front: the
// registry of every node's, a form to add one, and removal.

import { api, getToken } from '../api.js';
import {
  h, fill, icon, patchList, pageError, emptyState, confirmDialog, toast, toastError,
  fmtMs, shortId, isNum, debounce,
} from '../ui.js';

const REFRESH_MS = 10000; // endpoint health is polled by the node every 10 s; no event carries it

export function mount(root, { store }) {
  const errorBox = h('div');
  const body = h('tbody');
  const count = h('span', { class: 'muted small' }, '\u00a0');
  const table = h('table', { class: 'table endpoints-table stack-sm' },
    h('colgroup', {},
      h('col', { class: 'w-node' }), h('col', { class: 'w-name' }), h('col', { class: 'w-kind' }), h('col', { class: 'w-host' }),
      h('col', { class: 'w-models' }), h('col', { class: 'w-state' }), h('col', { class: 'w-err' }), h('col', { class: 'w-act' })),
    h('thead', {}, h('tr', {},
      ['Node', 'Name', 'Kind', 'Host : port', 'Models', 'State · latency', 'Last error', ''].map((t) =>
        h('th', { scope: 'col' }, t)))),
    body);

  const offs = [];
  const form = addForm(store, () => load(true), offs);
  root.append(
    h('header', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'page-title' }, 'Endpoints'),
        h('p', { class: 'page-sub' }, 'External OpenAI-compatible or Ollama servers a node fronts for the mesh. Their models join the catalog; their API keys stay on the node that fronts them.')),
      h('div', { class: 'toolbar' },
        h('button', { class: 'btn', type: 'button', tid: 'endpoint-refresh', onclick: () => load(true) }, icon('refresh'), 'Poll now'))),
    form,
    errorBox,
    h('div', { class: 'card table-card' }, h('div', { class: 'table-scroll' }, table)),
    h('div', { class: 'table-foot' }, count),
  );

  let rows = null;
  const removed = new Set(); // ids removed from this page
  const selfId = () => store.get('status')?.node_id;

  const draw = () => {
    if (!rows) return;
    if (!rows.length) {
      fill(body, h('tr', { class: 'empty-row' }, h('td', { colspan: '8' },
        emptyState('No endpoints', 'Add one below, start a node with --endpoint URL, or run an Ollama on this machine (found on 127.0.0.1:11434).'))));
    } else {
      if (body.querySelector('.empty-row')) body.replaceChildren();
      patchList(body, rows, (e) => `${e.node_id}/${e.id}`, (e) => endpointRow(e, selfId(), () => {
        removed.add(e.id);
        rows = rows.filter((r) => r.id !== e.id);
        draw();
        load(false);
      }),
        (e) => JSON.stringify([e, selfId()]));
    }
    const up = rows.filter((e) => e.state === 'up').length;
    count.textContent = `${rows.length} endpoint${rows.length === 1 ? '' : 's'} · ${up} up`;
  };

  let seq = 0;
  const load = async (poll) => {
    const mine = ++seq;
    try {
      const answer = await api(`/api/endpoints${poll ? '?refresh=1' : ''}`);
      if (mine !== seq) return;
      // one just removed may still be listed while its requests drain: not shown again
      rows = (answer.endpoints || []).filter((e) => {
        if (!removed.has(e.id)) return true;
        if (e.state === 'draining') return false;
        removed.delete(e.id);
        return true;
      }).sort((a, b) => (a.node_id + a.name < b.node_id + b.name ? -1 : 1));
      fill(errorBox);
      draw();
    } catch (exc) {
      if (mine !== seq) return;
      if (!rows) fill(body);
      fill(errorBox, pageError(exc, 'The endpoints'));
    }
  };

  const soon = debounce(() => load(false), 800);
  offs.push(store.subscribe('status', soon), store.subscribe('membership', soon));
  store.ensure('status');
  load(false);
  const timer = setInterval(() => {
    if (document.visibilityState === 'visible') load(false);
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    soon.cancel();
    offs.forEach((off) => off());
  };
}

function hostPort(url) {
  if (!url) return null;
  try {
    const u = new URL(url.includes('://') ? url : `http://${url}`);
    const port = u.port || (u.protocol === 'https:' ? '443' : '80');
    return { host: u.hostname, port, scheme: u.protocol.replace(':', ''), path: u.pathname !== '/' ? u.pathname : '' };
  } catch {
    return { host: url, port: '', scheme: '', path: '' };
  }
}

function endpointRow(e, selfId, reload) {
  const hp = hostPort(e.url);
  const models = Object.entries(e.models || {});
  const warm = models.filter(([, m]) => m.warm !== false).length;
  const remove = h('button', {
    class: 'btn btn-sm btn-danger-ghost', type: 'button', tid: 'endpoint-remove',
    'aria-label': `Remove endpoint ${e.name}`, title: 'Remove (after its requests in flight)',
  }, icon('trash'));
  remove.addEventListener('click', async () => {
    const ok = await confirmDialog({
      title: `Remove ${e.name}?`,
      body: [h('p', {}, 'New requests stop going to it at once; those in flight finish first. Its models leave the catalog unless another place has them.'),
        e.node_id !== selfId ? h('p', { class: 'muted small' }, 'It is another node\'s: removing it needs the mesh owner key on this machine.') : null],
      ok: 'Remove',
      danger: true,
    });
    if (!ok) return;
    remove.disabled = true;
    try {
      await api(`/api/endpoints/${encodeURIComponent(e.id)}`, { method: 'DELETE' });
      toast(`Removed endpoint ${e.name}`, 'ok', { timeout: 3000 });
      reload();
    } catch (exc) {
      remove.disabled = false;
      toastError(exc, `Removing ${e.name}`);
    }
  });
  const latency = isNum(e.latency_ms) ? fmtMs(e.latency_ms) : '—';
  return h('tr', { tid: 'endpoint-row', 'data-endpoint-id': e.id, class: `ep-${e.state}` },
    h('td', { 'data-label': 'Node', class: 'mono', title: e.node_id }, e.node_id === selfId ? h('span', {}, shortId(e.node_id), h('span', { class: 'badge badge-accent tiny' }, 'this')) : shortId(e.node_id)),
    h('td', { 'data-label': 'Name', class: 'ellipsis', title: `${e.name}\nid ${e.id}${e.origin ? `\n${e.origin}` : ''}` },
      h('div', { class: 'cell-stack' }, h('div', { class: 'ellipsis strong' }, e.name), h('div', { class: 'muted small mono' }, e.id))),
    h('td', { 'data-label': 'Kind' }, h('span', { class: ['badge', `kind-${e.kind}`] }, e.kind)),
    h('td', { 'data-label': 'Host : port', class: 'mono ellipsis', title: e.url || 'not announced (another node\'s)' },
      hp ? h('span', {}, hp.host, h('span', { class: 'muted' }, `:${hp.port}`)) : h('span', { class: 'muted' }, 'not shown')),
    h('td', { 'data-label': 'Models', class: 'ellipsis', title: models.map(([name, m]) => `${name}${m.warm === false ? ' (cold)' : ''}`).join('\n') },
      models.length
        ? h('div', { class: 'cell-stack' },
          h('div', { class: 'small' }, h('strong', {}, String(models.length)), h('span', { class: 'muted' }, ` model${models.length === 1 ? '' : 's'} · ${warm} warm`)),
          h('div', { class: 'ellipsis small mono' }, models.map(([n]) => n).join(', ')))
        : h('span', { class: 'muted' }, 'none')),
    h('td', { 'data-label': 'State' }, h('div', { class: 'cell-stack' },
      h('div', {}, h('span', { class: ['health', `ep-state-${e.state}`], tid: 'endpoint-state' }, h('span', { class: 'health-dot', 'aria-hidden': 'true' }), e.state),
        e.has_api_key ? h('span', { class: 'badge tiny', title: 'requests to it carry an API key (never shown)' }, 'key') : null),
      h('div', { class: 'muted small', tid: 'endpoint-latency', title: 'its last health poll\'s round trip' }, latency))),
    h('td', { 'data-label': 'Last error', class: 'ellipsis err-text', title: e.error || '' }, e.error || h('span', { class: 'muted' }, '—')),
    h('td', { class: 'actions' }, remove),
  );
}

function addForm(store, reload, offs) {
  const url = h('input', { class: 'input mono', id: 'ep-url', tid: 'endpoint-url', type: 'text', required: true, placeholder: 'http://10.0.0.5:11434', autocomplete: 'off', spellcheck: 'false' });
  const kind = h('select', { class: 'input', id: 'ep-kind', tid: 'endpoint-kind' },
    h('option', { value: 'auto' }, 'auto (detect)'), h('option', { value: 'openai' }, 'openai'), h('option', { value: 'ollama' }, 'ollama'));
  const name = h('input', { class: 'input', id: 'ep-name', tid: 'endpoint-name', type: 'text', placeholder: 'gpu-box', autocomplete: 'off', pattern: '[A-Za-z0-9][A-Za-z0-9_.:@+\\-]{0,63}', title: 'letters, digits and _ . : @ + -' });
  const key = h('input', { class: 'input mono', id: 'ep-key', tid: 'endpoint-api-key', type: 'password', placeholder: 'optional', autocomplete: 'off' });
  const node = h('select', { class: 'input', id: 'ep-node', tid: 'endpoint-node' }, h('option', { value: '' }, 'this node'));
  const add = h('button', { class: 'btn btn-primary', type: 'submit', tid: 'endpoint-add' }, icon('plus'), 'Add endpoint');
  const fillNodes = () => {
    const st = store.get('status');
    if (!st) return;
    const chosen = node.value;
    fill(node, h('option', { value: '' }, `this node (${shortId(st.node_id)})`),
      (st.peers || []).map((p) => h('option', { value: p.node_id, selected: p.node_id === chosen }, `${shortId(p.node_id)} (${p.role})`)));
  };
  offs.push(store.subscribe('status', fillNodes));
  fillNodes();

  const form = h('form', { class: 'card form-card', tid: 'endpoint-form', novalidate: true, 'aria-label': 'Add an endpoint' },
    h('div', { class: 'card-head' }, h('h2', { class: 'section-title' }, 'Add an endpoint'),
      getToken() ? null : h('span', { class: 'muted small' }, 'needs the admin token')),
    h('div', { class: 'form-grid ep-grid' },
      field('URL', url, 'span-2'),
      field('Kind', kind),
      field('Name', name),
      field('API key', key),
      field('On', node),
      h('div', { class: 'form-submit' }, add)));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = url.value.trim();
    if (!text) {
      url.focus();
      toast('Give the endpoint\'s URL', 'error', { timeout: 3000 });
      return;
    }
    const body = { url: text, kind: kind.value };
    if (name.value.trim()) body.name = name.value.trim();
    if (key.value) body.api_key = key.value;
    if (node.value) body.node = node.value;
    add.disabled = true;
    try {
      const answer = await api('/api/endpoints', { method: 'POST', body });
      const rec = answer.endpoint || {};
      toast(rec.pending ? `Asked ${shortId(rec.node_id)} to add ${text}` : `Added ${rec.name || rec.url || text}`, 'ok', { timeout: 3500 });
      url.value = '';
      name.value = '';
      key.value = '';
      reload();
    } catch (exc) {
      toastError(exc, 'Adding the endpoint');
    } finally {
      add.disabled = false;
    }
  });
  return form;
}

function field(label, input, cls) {
  return h('label', { class: ['field', cls] }, h('span', { class: 'field-label' }, label), input);
}
