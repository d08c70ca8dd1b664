// pages/fleet.js: the mesh at a glance: a summary, one card per node (role, health,
// resources, models), and the topology of this node's links.

import {
  h, s, fill, bar, stateChip, patchList, pageError, isNum,
  fmtBytes, fmtGiB, fmtMs, fmtDuration, fmtNum, STATE_ORDER, shortId,
} from '../ui.js';

const RESOURCE_REFRESH_MS = 5000; // resources are not evented: a slow timer

export function mount(root, { store }) {
  const summary = h('section', { class: 'tiles', tid: 'fleet-summary', 'aria-label': 'Fleet summary' });
  const headline = h('p', { class: 'page-sub' }, '\u00a0');
  const cards = h('div', { class: 'node-grid', 'aria-label': 'Nodes' });
  const topo = h('div', { class: 'topology-wrap' });
  const errorBox = h('div');
  root.append(
    h('header', { class: 'page-head' },
      h('div', {}, h('h1', { class: 'page-title' }, 'Fleet'), headline)),
    errorBox,
    summary,
    h('div', { class: 'fleet-layout' },
      h('section', { class: 'fleet-nodes' }, h('h2', { class: 'section-title' }, 'Nodes'), cards),
      h('section', { class: 'card topology-card' },
        h('div', { class: 'card-head' },
          h('h2', { class: 'section-title' }, 'Topology'),
          h('span', { class: 'legend' },
            h('span', { class: 'legend-item' }, h('span', { class: 'legend-line linked' }), 'linked'),
            h('span', { class: 'legend-item' }, h('span', { class: 'legend-line unlinked' }), 'no link'),
            h('span', { class: 'legend-item' }, h('span', { class: 'legend-line suspect' }), 'suspect'))),
        topo)),
  );
  renderSummarySkeleton(summary);

  const draw = () => {
    const status = store.get('status');
    const fleet = store.get('fleet');
    const models = store.get('models') || [];
    const err = store.errorOf('status');
    if (!status) {
      fill(errorBox, err ? pageError(err, 'The fleet') : '');
      return;
    }
    fill(errorBox, err ? h('div', { class: 'banner warn' }, `Showing the last figures: ${err.message}`) : '');
    const nodes = nodeList(status, fleet);
    headline.textContent = fleet?.summary || '\u00a0';
    renderSummary(summary, nodes, fleet, models);
    const byNode = modelsByNode(models);
    patchList(cards, nodes, (n) => n.id, (n) => nodeCard(n, byNode.get(n.id) || []),
      (n) => JSON.stringify([n, byNode.get(n.id) || []]));
    renderTopology(topo, nodes, (id) => {
      const card = cards.querySelector(`[data-node-id="${CSS.escape(id)}"]`);
      if (card) {
        card.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
        card.classList.remove('flash');
        void card.offsetWidth;
        card.classList.add('flash');
      }
    });
  };

  const offs = ['status', 'fleet', 'models'].map((t) => store.subscribe(t, draw));
  draw();
  store.refresh('status');
  store.refresh('fleet');
  store.ensure('models');
  const timer = setInterval(() => {
    if (document.visibilityState === 'visible') {
      store.refresh('fleet');
      store.refresh('status');
    }
  }, RESOURCE_REFRESH_MS);
  return () => {
    clearInterval(timer);
    offs.forEach((off) => off());
  };
}

// --- data: this node and its peers, with their live resources -----------------------------------

function nodeList(status, fleet) {
  const figures = new Map((fleet?.nodes || []).map((n) => [n.node_id, n]));
  const fromStatus = (n, self) => {
    const f = figures.get(n.node_id);
    const r = n.resources || null;
    return {
      id: n.node_id,
      self,
      role: n.role || f?.role || 'unknown',
      version: n.version || '',
      addr: (n.addrs || [])[0] || '',
      httpPort: n.http_port,
      load: n.load,
      leaving: Boolean(n.leaving),
      linked: self ? true : Boolean(n.linked),
      suspect: self ? false : Boolean(n.suspect),
      rtt: self ? null : n.rtt_ms,
      seen: self ? null : n.last_seen_s,
      uptime: self ? status.uptime_s : null,
      memoryKind: n.memory_kind || f?.memory_kind || null,
      memoryBytes: n.memory_bytes,
      resState: f?.resources_state || n.resources_state || 'unknown',
      resAge: isNum(f?.age_s) ? f.age_s : n.resources_age_s,
      cpu: f ? f.cpu_percent : r?.cpu_percent ?? null,
      cpuCount: f ? f.cpu_count : r?.cpu_count ?? null,
      loadAvg: f ? f.load_avg : r?.load_avg ?? null,
      ramUsed: f ? f.ram_used : r?.ram_used ?? null,
      ramTotal: f ? f.ram_total : r?.ram_total ?? null,
      gpus: f ? f.gpus : r ? r.gpus : null,
      endpoints: f?.endpoints || Object.keys(n.endpoints || {}),
      idleReason: self ? status.idle_reason : null,
    };
  };
  const list = [fromStatus(status, true), ...(status.peers || []).map((p) => fromStatus(p, false))];
  // a node the fleet view knows and the status does not (should not happen): still shown
  for (const f of fleet?.nodes || []) {
    if (!list.some((n) => n.id === f.node_id)) list.push(fromStatus({ node_id: f.node_id, role: f.role }, false));
  }
  return list;
}

function modelsByNode(models) {
  const map = new Map();
  for (const m of models) {
    for (const n of m.nodes || []) {
      if (!map.has(n.node_id)) map.set(n.node_id, []);
      map.get(n.node_id).push({ model: m.model, state: n.state, deadline: n.deadline, pinned: n.pinned, progress: n.progress, cause: n.cause });
    }
  }
  for (const list of map.values()) {
    list.sort((a, b) => STATE_ORDER.indexOf(a.state) - STATE_ORDER.indexOf(b.state) || (a.model < b.model ? -1 : 1));
  }
  return map;
}

// --- summary tiles --------------------------------------------------------------------------------

function tile(label, value, detail, extra) {
  return h('div', { class: ['tile', extra] },
    h('div', { class: 'tile-label' }, label),
    h('div', { class: 'tile-value' }, value),
    h('div', { class: 'tile-detail' }, detail || '\u00a0'));
}

function renderSummarySkeleton(el) {
  fill(el, ['Nodes', 'Models hot', 'VRAM for models', 'RAM for models'].map((l) => tile(l, '—', '', 'skeleton')));
}

function memoryTile(label, mem, kind) {
  if (!mem || !mem.nodes) {
    return tile(label, '—', kind === 'vram' ? 'no GPU node' : 'no CPU-only node');
  }
  const pct = mem.total ? (mem.used / mem.total) * 100 : null;
  const t = tile(`${label} · free`,
    h('span', {}, `${fmtGiB(mem.free)}`, h('span', { class: 'tile-unit' }, ` / ${fmtGiB(mem.total)} GiB`)),
    `${mem.nodes} node${mem.nodes === 1 ? '' : 's'} · ${fmtBytes(mem.used)} used`);
  const meter = h('div', { class: 'tile-meter', 'aria-hidden': 'true' }, h('div', { class: 'bar-fill' }));
  if (isNum(pct)) meter.style.setProperty('--pct', `${pct.toFixed(1)}%`);
  t.append(meter);
  return t;
}

function renderSummary(el, nodes, fleet, models) {
  const roles = fleet?.hosts || nodes.reduce((acc, n) => ({ ...acc, [n.role]: (acc[n.role] || 0) + 1 }), {});
  const hosts = new Set(nodes.map((n) => (n.addr || n.id).split(':')[0]));
  const roleText = ['host', 'worker', 'client']
    .filter((r) => roles[r])
    .map((r) => `${roles[r]} ${r}${roles[r] === 1 ? '' : 's'}`)
    .join(' · ');
  const list = fleet?.models || models;
  const hot = list.filter((m) => m.state === 'hot' || m.state === 'cooling' || (m.hot || 0) > 0).length;
  const mem = fleet?.memory || {};
  const flags = [];
  if (mem.stale_nodes) flags.push(`${mem.stale_nodes} stale`);
  if (mem.unknown_nodes) flags.push(`${mem.unknown_nodes} unknown`);
  const suspects = nodes.filter((n) => n.suspect).length;
  fill(el,
    tile('Nodes', h('span', {}, String(nodes.length), h('span', { class: 'tile-unit' }, ` on ${hosts.size} machine${hosts.size === 1 ? '' : 's'}`)),
      [roleText || '—', suspects ? `${suspects} suspect` : ''].filter(Boolean).join(' · '), suspects ? 'tile-warn' : ''),
    tile('Models hot', h('span', {}, String(hot), h('span', { class: 'tile-unit' }, ` / ${list.length}`)),
      list.length ? `${list.length - hot} cold or starting` : 'no model in the catalog'),
    memoryTile('VRAM for models', mem.vram, 'vram'),
    memoryTile('RAM for models', mem.ram, 'ram'),
  );
  if (flags.length) el.lastElementChild.querySelector('.tile-detail').textContent += ` · ${flags.join(', ')} figures`;
}

// --- node cards ---------------------------------------------------------------------------------------

function gpuFigures(gpus) {
  if (gpus === null || gpus === undefined) return { known: false };
  if (!gpus.length) return { known: true, none: true };
  let used = 0;
  let total = 0;
  let utilSum = 0;
  let utilN = 0;
  let vramKnown = true;
  for (const g of gpus) {
    if (isNum(g.vram_used) && isNum(g.vram_total)) {
      used += g.vram_used;
      total += g.vram_total;
    } else vramKnown = false;
    if (isNum(g.util_percent)) {
      utilSum += g.util_percent;
      utilN += 1;
    }
  }
  const names = [...new Set(gpus.map((g) => g.name))];
  const temps = gpus.map((g) => g.temperature_c).filter(isNum);
  const power = gpus.map((g) => g.power_w).filter(isNum);
  return {
    known: true,
    none: false,
    count: gpus.length,
    names,
    vramPct: vramKnown && total ? (used / total) * 100 : null,
    used,
    total,
    utilPct: utilN ? utilSum / utilN : null,
    temp: temps.length ? Math.max(...temps) : null,
    power: power.length ? power.reduce((a, b) => a + b, 0) : null,
  };
}

function healthOf(n) {
  if (n.self) return { key: 'self', text: 'this node' };
  if (n.leaving) return { key: 'leaving', text: 'leaving' };
  if (n.suspect) return { key: 'suspect', text: 'suspect' };
  return { key: 'alive', text: 'alive' };
}

function nodeCard(n, models) {
  const health = healthOf(n);
  const unknown = n.resState === 'unknown';
  const stale = n.resState === 'stale';
  const ramPct = isNum(n.ramUsed) && isNum(n.ramTotal) && n.ramTotal ? (n.ramUsed / n.ramTotal) * 100 : null;
  const gpu = unknown ? { known: false } : gpuFigures(n.gpus);
  const cpuDetail = [isNum(n.cpuCount) ? `${n.cpuCount} cores` : '', Array.isArray(n.loadAvg) ? `load ${n.loadAvg.map((x) => fmtNum(x, 2)).join(' ')}` : '']
    .filter(Boolean).join(' · ');
  const gpuUnknownText = gpu.known && gpu.none ? 'no GPU' : 'unknown';
  const vramBar = bar({
    label: 'VRAM',
    pct: gpu.vramPct,
    detail: gpu.known && !gpu.none && gpu.total ? `${fmtGiB(gpu.used)} / ${fmtGiB(gpu.total)} GiB` : gpu.none ? 'CPU-only node' : '',
    tid: 'bar-vram',
    unknownText: gpuUnknownText,
  });
  if (gpu.none) vramBar.dataset.reason = 'no-gpu';

  const facts = [
    n.role === 'client' ? 'lite client' : null,
    n.version ? `v${n.version}` : null,
    n.addr || null,
    n.self && isNum(n.uptime) ? `up ${fmtDuration(n.uptime)}` : null,
    isNum(n.load) ? `${n.load} in flight` : null,
  ].filter(Boolean);

  const health_row = h('div', { class: 'node-health' },
    h('span', { class: ['health', `health-${health.key}`] }, h('span', { class: 'health-dot', 'aria-hidden': 'true' }), health.text),
    n.self ? null : h('span', { class: 'kv' }, h('span', { class: 'k' }, 'RTT'), h('span', { class: 'v' }, isNum(n.rtt) ? fmtMs(n.rtt) : 'unknown')),
    n.self ? null : h('span', { class: 'kv' }, h('span', { class: 'k' }, 'seen'), h('span', { class: 'v' }, isNum(n.seen) ? `${fmtDuration(n.seen)} ago` : 'unknown')),
    n.self ? null : h('span', { class: 'kv' }, h('span', { class: 'k' }, 'link'), h('span', { class: 'v' }, n.linked ? 'open' : 'none')),
    stale ? h('span', { class: 'badge badge-warn', title: 'its last report is older than 3 intervals' }, `stale · ${fmtDuration(n.resAge)}`) : null,
    unknown ? h('span', { class: 'badge', title: 'no resource report heard' }, 'resources unknown') : null,
  );

  const shown = models.slice(0, 6);
  const modelList = n.role === 'client'
    ? h('p', { class: 'muted small' }, 'A lite client: it routes requests and serves no model.')
    : models.length
      ? h('div', { class: 'node-models' },
        shown.map((m) => stateChip(m.state, { label: m.model, deadline: m.deadline, pinned: m.pinned, progress: m.progress, cause: m.cause, tid: 'node-model' })),
        models.length > shown.length ? h('a', { class: 'chip chip-more', href: '#/models' }, `+${models.length - shown.length} more`) : null)
      : h('p', { class: 'muted small' }, n.idleReason || 'No model on this node.');

  return h('article', {
    class: ['card', 'node-card', n.self && 'is-self', `res-${n.resState}`, `role-${n.role}`],
    tid: 'node-card',
    'data-node-id': n.id,
    'aria-label': `node ${n.id}`,
  },
  h('div', { class: 'node-head' },
    h('div', { class: 'node-title' },
      h('span', { class: 'node-id mono', title: n.id }, n.id),
      n.self ? h('span', { class: 'badge badge-accent' }, 'this node') : null),
    h('span', { class: ['role', `role-${n.role}`], tid: 'node-role' }, n.role)),
  h('div', { class: 'node-facts muted' }, facts.join(' · ') || '\u00a0'),
  health_row,
  h('div', { class: ['bars', (stale || unknown) && 'dim'] },
    bar({ label: 'CPU', pct: unknown ? null : n.cpu, detail: cpuDetail, tid: 'bar-cpu' }),
    bar({ label: 'RAM', pct: unknown ? null : ramPct, detail: isNum(n.ramTotal) ? `${fmtGiB(n.ramUsed)} / ${fmtGiB(n.ramTotal)} GiB` : '', tid: 'bar-ram' }),
    bar({
      label: 'GPU',
      pct: gpu.utilPct,
      detail: gpu.known && !gpu.none ? [gpu.names.join(', '), isNum(gpu.temp) ? `${gpu.temp}°C` : '', isNum(gpu.power) ? `${Math.round(gpu.power)} W` : ''].filter(Boolean).join(' · ') : '',
      tid: 'bar-gpu',
      unknownText: gpuUnknownText,
    }),
    vramBar),
  h('div', { class: 'node-section-label' }, `Models${models.length ? ` · ${models.length}` : ''}`),
  modelList,
  n.endpoints.length ? h('div', { class: 'node-endpoints muted small' }, `Fronts ${n.endpoints.length} endpoint${n.endpoints.length === 1 ? '' : 's'}: `, h('a', { href: '#/endpoints' }, 'see endpoints')) : null,
  );
}

// --- topology: this node in the middle, its peers around it ---------------------------------------------

function renderTopology(el, nodes, onPick) {
  const W = 420;
  const H = 320;
  const cx = W / 2;
  const cy = H / 2;
  const self = nodes.find((n) => n.self);
  const peers = nodes.filter((n) => !n.self);
  // redraw only when what it shows changed (keeps keyboard focus, no flicker)
  const sig = JSON.stringify(nodes.map((n) => [n.id, n.role, healthOf(n).key, n.linked, isNum(n.rtt) ? fmtMs(n.rtt) : null]));
  if (el._sig === sig) return;
  el._sig = sig;
  const focusedId = el.contains(document.activeElement) ? document.activeElement.getAttribute('data-node-id') : null;
  const svg = s('svg', {
    class: 'topology',
    tid: 'topology',
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-label': `Topology: this node and ${peers.length} peer${peers.length === 1 ? '' : 's'}`,
  });
  // rings to read distance by
  svg.append(s('circle', { class: 'topo-ring', cx, cy, r: 120 }), s('circle', { class: 'topo-ring', cx, cy, r: 60 }));
  const rx = Math.min(150, W / 2 - 50);
  const ry = Math.min(112, H / 2 - 42);
  const placed = peers.map((p, i) => {
    // one peer: to the right; two: either side; more: around, from the top
    const start = peers.length <= 2 ? 0 : -Math.PI / 2;
    const a = start + (i * 2 * Math.PI) / Math.max(peers.length, 1);
    return { node: p, x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) };
  });
  const links = s('g', { class: 'topo-links' });
  for (const p of placed) {
    const kind = p.node.suspect ? 'suspect' : p.node.linked ? 'linked' : 'unlinked';
    links.append(s('line', { class: ['topo-link', kind], x1: cx, y1: cy, x2: p.x, y2: p.y }));
    if (isNum(p.node.rtt) && p.node.linked) {
      const mx = (cx + p.x) / 2;
      const my = (cy + p.y) / 2;
      const label = fmtMs(p.node.rtt);
      links.append(
        s('rect', { class: 'topo-rtt-bg', x: mx - label.length * 3.2 - 4, y: my - 8, width: label.length * 6.4 + 8, height: 16, rx: 8 }),
        s('text', { class: 'topo-rtt', x: mx, y: my + 4, 'text-anchor': 'middle' }, label),
      );
    }
  }
  svg.append(links);
  const drawNode = (n, x, y, r) => {
    const health = healthOf(n);
    const g = s('g', {
      class: ['topo-node', `role-${n.role}`, `health-${health.key}`],
      tid: 'topology-node',
      'data-node-id': n.id,
      transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})`,
      tabindex: '0',
      role: 'button',
      'aria-label': `${n.id}, ${n.role}, ${health.text}`,
    },
    s('title', {}, `${n.id}\n${n.role} · ${health.text}${isNum(n.rtt) ? ` · RTT ${fmtMs(n.rtt)}` : ''}`),
    s('circle', { class: 'topo-halo', r: r + 5 }),
    s('circle', { class: 'topo-dot', r }),
    s('text', { class: 'topo-glyph', y: 4, 'text-anchor': 'middle' }, n.role === 'host' ? 'H' : n.role === 'worker' ? 'W' : n.role === 'client' ? 'C' : '?'),
    s('text', { class: 'topo-label', y: r + 16, 'text-anchor': 'middle' }, shortId(n.id)),
    s('text', { class: 'topo-sublabel', y: r + 29, 'text-anchor': 'middle' }, n.self ? `${n.role} · this node` : n.role));
    g.addEventListener('click', () => onPick(n.id));
    g.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        onPick(n.id);
      }
    });
    return g;
  };
  for (const p of placed) svg.append(drawNode(p.node, p.x, p.y, 15));
  if (self) svg.append(drawNode(self, cx, cy, 21));
  fill(el, svg);
  if (focusedId) svg.querySelector(`[data-node-id="${CSS.escape(focusedId)}"]`)?.focus();
  if (!peers.length) el.append(h('p', { class: 'topo-note muted small' }, 'No peers yet: nodes that join with this mesh\'s token appear here.'));
}

