// pages/models.js: the model pool: every model's state on every node, live from
// model_state events, and the pool commands (load, unload, pin/unpin, extend TTL, drop).
// Rows and their state chips are built once and updated in place: a chip is the same
// element from cold to warming to hot, so nothing flickers and focus stays put.

import { api } from '../api.js';
import {
  h, fill, icon, stateChip, updateChip, pageError, emptyState, confirmDialog, toast, toastError,
  fmtBytes, fmtNum, fmtDuration, shortId, isNum,
} from '../ui.js';

const EXTEND_CHOICES = [
  [900, '15 min'],
  [3600, '1 hour'],
  [4 * 3600, '4 hours'],
  [24 * 3600, '1 day'],
  [7 * 24 * 3600, '1 week'],
];
const LOADED = new Set(['hot', 'cooling']);
const BUSY = new Set(['warming', 'fetching', 'unloading']);
const VERB = { load: 'Load of', unload: 'Unload of', pin: 'Pin of', unpin: 'Unpin of', 'extend-ttl': 'TTL extended for', drop: 'Drop of' };

// kept while the tab lives
let extendSeconds = 3600;
let filterText = '';
const targets = new Map(); // model -> the node chosen for its commands ('': the mesh decides)

export function mount(root, { store }) {
  const list = h('div', { class: 'model-list', role: 'list' });
  const errorBox = h('div');
  const count = h('span', { class: 'muted small count' }, '\u00a0');
  const search = h('input', {
    class: 'input input-sm', type: 'search', placeholder: 'Filter models', 'aria-label': 'Filter models',
    tid: 'model-filter', value: filterText,
  });
  const extendSel = h('select', { class: 'input input-sm', tid: 'model-extend-seconds', 'aria-label': 'Extend TTL by' },
    EXTEND_CHOICES.map(([sec, label]) => h('option', { value: String(sec), selected: sec === extendSeconds }, label)));
  root.append(
    h('header', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'page-title' }, 'Models'),
        h('p', { class: 'page-sub' }, 'Every model of the mesh catalog and its state on each node. A model loads on its first request; idle ones unload after their TTL.')),
      h('div', { class: 'toolbar' },
        search,
        h('label', { class: 'inline-field' }, h('span', { class: 'muted small' }, 'Extend by'), extendSel))),
    errorBox,
    h('div', { class: 'card table-card' },
      h('div', { class: 'model-head', 'aria-hidden': 'true' },
        h('span', {}, 'Model'), h('span', {}, 'On nodes'), h('span', { class: 'num' }, 'Replicas'), h('span', { class: 'num' }, 'Demand'), h('span', { class: 'actions-col' }, 'Actions')),
      list),
    h('div', { class: 'table-foot' }, count, legend()),
  );

  const rows = new Map(); // model -> row component
  const env = { store, selfId: null, nodes: [] };

  const draw = () => {
    const models = store.get('models');
    const status = store.get('status');
    const err = store.errorOf('models');
    fill(errorBox, !models && err ? pageError(err, 'The models') : err ? h('div', { class: 'banner warn' }, `Showing the last states: ${err.message}`) : '');
    if (!models) return;
    env.selfId = status?.node_id || null;
    env.nodes = status ? [status.node_id, ...(status.peers || []).filter((p) => p.role !== 'client').map((p) => p.node_id)] : [];
    const q = filterText.trim().toLowerCase();
    const shown = models.filter((m) => !q || m.model.toLowerCase().includes(q));
    if (!models.length) {
      rows.clear();
      fill(list, emptyState('No models yet', 'Start a node with --model PATH or --models-dir DIR, or add an endpoint.'));
    } else {
      list.querySelector(':scope > .empty')?.remove();
      const keep = new Set(shown.map((m) => m.model));
      for (const [name, row] of rows) {
        if (!keep.has(name)) {
          row.el.remove();
          rows.delete(name);
        }
      }
      let cursor = list.firstElementChild;
      for (const m of shown) {
        let row = rows.get(m.model);
        if (!row) {
          row = modelRow(m.model, env);
          rows.set(m.model, row);
        }
        row.update(m);
        if (row.el !== cursor) list.insertBefore(row.el, cursor);
        else cursor = cursor.nextElementSibling;
      }
    }
    const loaded = models.filter((m) => (m.nodes || []).some((n) => LOADED.has(n.state))).length;
    count.textContent = `${models.length} model${models.length === 1 ? '' : 's'} · ${loaded} loaded${q ? ` · ${shown.length} shown` : ''}`;
  };

  search.addEventListener('input', () => {
    filterText = search.value;
    draw();
  });
  extendSel.addEventListener('change', () => {
    extendSeconds = Number(extendSel.value);
    for (const row of rows.values()) row.refreshExtend();
  });

  const offs = [store.subscribe('models', draw), store.subscribe('status', draw)];
  draw();
  store.refresh('models');
  store.ensure('status');
  return () => offs.forEach((off) => off());
}

function legend() {
  return h('div', { class: 'legend' },
    ['hot', 'cooling', 'warming', 'fetching', 'unloading', 'failed', 'cold'].map((st) =>
      h('span', { class: 'legend-item' }, h('span', { class: ['chip-dot', `st-${st}`] }), st)));
}

const extendLabel = () => `+${fmtDuration(extendSeconds).replace(/ 00[ms]$/, '')}`;

/** One model's row: built once, then `update(m)` with each new view of the model. */
function modelRow(model, env) {
  let cur = null; // the model as last shown
  const busy = new Set(); // actions in flight: their buttons stay disabled
  const nodeWord = (id) => (id === env.selfId ? 'this node' : shortId(id));

  const name = h('div', { class: 'model-name mono', title: model }, model);
  const meshChip = stateChip('cold', { tid: 'model-state' });
  const size = h('span', {}, '');
  const pinBadge = h('span', { class: 'badge', hidden: true }, 'pinned');
  const nodesBox = h('div', { class: 'model-nodes' });
  const onlyEndpoint = h('span', { class: 'muted small' }, 'only through an endpoint');
  const cause = h('div', { class: 'model-cause small', hidden: true });
  const replicas = h('span', { class: 'big-num' }, '0');
  const replicasOf = h('span', { class: 'muted small' }, '');
  const demand = h('span', {}, '');
  const chips = new Map(); // node id -> chip element

  const target = h('select', { class: 'input input-sm target', tid: 'model-target', 'aria-label': `Where to run commands for ${model}` });
  target.addEventListener('change', () => targets.set(model, target.value));
  let targetSig = '';

  const run = async (action, btn, confirm) => {
    if (confirm && !(await confirmDialog(confirm()))) return;
    const node = target.value || undefined;
    busy.add(action);
    btn.disabled = true;
    try {
      let answer;
      if (action === 'drop') {
        answer = await api('/api/drop', { method: 'POST', body: { model } });
      } else {
        const body = {};
        if (node) body.node = node;
        if (action === 'extend-ttl') body.seconds = extendSeconds;
        answer = await api(`/api/models/${encodeURIComponent(model)}/${action}`, { method: 'POST', body });
      }
      const told = (answer?.nodes || []).map((id) => nodeWord(id)).join(', ');
      toast(`${VERB[action]} ${model}${told ? `: sent to ${told}` : ''}`, 'ok', { timeout: 3500 });
      env.store.refresh('models');
    } catch (exc) {
      toastError(exc, `${VERB[action]} ${model}`);
    } finally {
      busy.delete(action);
      if (cur) update(cur);
    }
  };

  const button = (tid, label, action, { danger, title, confirm, iconName } = {}) => {
    const btn = h('button', { class: ['btn', 'btn-sm', danger && 'btn-danger-ghost'], type: 'button', tid, title },
      iconName ? icon(iconName) : null, h('span', { class: 'btn-label' }, label));
    btn.addEventListener('click', () => run(typeof action === 'function' ? action() : action, btn, confirm));
    return btn;
  };
  const loadBtn = button('model-load', 'Load', 'load', { title: 'Load it (where the mesh places it, or on the chosen node)' });
  const unloadBtn = button('model-unload', 'Unload', 'unload', {
    danger: false,
    title: 'Unload it (everywhere it is loaded, or on the chosen node), after its requests end',
    confirm: () => {
      const loadedOn = (cur?.nodes || []).filter((n) => LOADED.has(n.state) || BUSY.has(n.state));
      return {
        title: `Unload ${model}?`,
        body: [h('p', {},
          target.value ? `It unloads on ${nodeWord(target.value)}` : `It unloads on every node that has it loaded (${loadedOn.map((n) => nodeWord(n.node_id)).join(', ') || 'none now'})`,
          ', once its requests in flight end. The next request loads it again.')],
        ok: 'Unload',
        danger: true,
      };
    },
  });
  const pinned = () => (cur?.nodes || []).some((n) => n.pinned);
  const pinBtn = button('model-pin', 'Pin', () => (pinned() ? 'unpin' : 'pin'));
  const extendBtn = button('model-extend', '+1h', 'extend-ttl');
  const dropBtn = button('model-drop', 'Drop', 'drop', {
    danger: true,
    iconName: 'trash',
    title: 'Stop serving it wherever it is served',
    confirm: () => ({
      title: `Drop ${model}?`,
      body: [h('p', {}, 'Every node that serves it stops serving it now. Requests for it fail until a node loads it again.'),
        h('p', { class: 'muted small' }, 'Dropping it on other nodes needs the mesh owner key on this machine.')],
      ok: 'Drop',
      danger: true,
    }),
  });
  for (const [btn, verb] of [[loadBtn, 'Load'], [unloadBtn, 'Unload'], [extendBtn, 'Extend the TTL of'], [dropBtn, 'Drop']]) {
    btn.setAttribute('aria-label', `${verb} ${model}`);
  }

  const el = h('div', { class: 'model-row', tid: 'model-row', 'data-model': model, role: 'listitem' },
    h('div', { class: 'model-name-cell' }, name, h('div', { class: 'model-meta muted small' }, meshChip, size, pinBadge)),
    h('div', { class: 'model-nodes-cell' }, nodesBox, cause),
    h('div', { class: 'num', 'data-label': 'Replicas', title: 'nodes that have it loaded / nodes that have it' }, replicas, replicasOf),
    h('div', { class: 'num', 'data-label': 'Demand', title: 'requests a minute, all nodes\' proxies together' }, demand),
    h('div', { class: 'model-actions' }, target, loadBtn, unloadBtn, pinBtn, extendBtn, dropBtn));

  const refreshExtend = () => {
    extendBtn.querySelector('.btn-label').textContent = extendLabel();
    const choice = EXTEND_CHOICES.find(([sec]) => sec === extendSeconds);
    extendBtn.title = `Keep it loaded ${choice ? choice[1] : fmtDuration(extendSeconds)} longer (extend its TTL)`;
  };

  function update(m) {
    cur = m;
    const entries = [...(m.nodes || [])].sort((a, b) =>
      a.node_id === env.selfId ? -1 : b.node_id === env.selfId ? 1 : a.node_id < b.node_id ? -1 : 1);
    const loadedOn = entries.filter((n) => LOADED.has(n.state));
    const anyLoaded = loadedOn.length > 0 || entries.some((n) => BUSY.has(n.state));
    const isPinned = entries.some((n) => n.pinned);
    el.classList.toggle('is-loaded', anyLoaded);

    updateChip(meshChip, m.state, {});
    size.textContent = isNum(m.size_bytes) ? fmtBytes(m.size_bytes) : 'size unknown';
    pinBadge.hidden = !isPinned;

    // one chip per node, kept from one update to the next
    const seen = new Set();
    let at = nodesBox.firstElementChild;
    for (const n of entries) {
      seen.add(n.node_id);
      let chip = chips.get(n.node_id);
      if (!chip) {
        chip = stateChip(n.state, { tid: 'model-node-state', node: n.node_id });
        chips.set(n.node_id, chip);
      }
      updateChip(chip, n.state, {
        label: nodeWord(n.node_id), deadline: n.deadline, progress: n.progress, pinned: n.pinned, cause: n.cause,
      });
      if (chip !== at) nodesBox.insertBefore(chip, at);
      else at = at.nextElementSibling;
    }
    for (const [id, chip] of chips) {
      if (!seen.has(id)) {
        chip.remove();
        chips.delete(id);
      }
    }
    if (!entries.length) nodesBox.append(onlyEndpoint);
    else onlyEndpoint.remove();
    const failed = entries.filter((n) => n.state === 'failed' && n.cause);
    cause.hidden = !failed.length;
    cause.textContent = failed.map((n) => `${nodeWord(n.node_id)}: ${String(n.cause).split('\n')[0]}`).join(' · ');
    cause.title = failed.map((n) => `${n.node_id}: ${n.cause}`).join('\n\n');

    replicas.textContent = String(loadedOn.length);
    replicasOf.textContent = ` / ${entries.length}`;
    demand.textContent = isNum(m.rpm) && m.rpm > 0 ? `${fmtNum(m.rpm)} rpm` : '0 rpm';
    demand.classList.toggle('muted', !(m.rpm > 0));

    const sig = [env.selfId, ...env.nodes].join(',');
    if (sig !== targetSig) {
      targetSig = sig;
      const chosen = targets.get(model) || '';
      fill(target, h('option', { value: '' }, 'Mesh decides'),
        env.nodes.map((id) => h('option', { value: id }, id === env.selfId ? `${shortId(id)} (this node)` : shortId(id))));
      target.value = env.nodes.includes(chosen) ? chosen : '';
    }

    loadBtn.disabled = busy.has('load');
    unloadBtn.disabled = busy.has('unload') || !anyLoaded;
    pinBtn.disabled = busy.has('pin') || busy.has('unpin');
    pinBtn.querySelector('.btn-label').textContent = isPinned ? 'Unpin' : 'Pin';
    pinBtn.title = isPinned ? 'Unpin: it may unload again when idle' : 'Pin: load it and keep it loaded';
    pinBtn.setAttribute('aria-label', `${isPinned ? 'Unpin' : 'Pin'} ${model}`);
    pinBtn.setAttribute('aria-pressed', String(isPinned));
    extendBtn.disabled = busy.has('extend-ttl') || !loadedOn.length;
    dropBtn.disabled = busy.has('drop');
    refreshExtend();
  }

  return { el, update, refreshExtend };
}

