// store.js: the mesh as the pages see it: /api/status, /api/fleet and /api/models,
// fetched on demand and kept fresh by the live event stream (model_state events patch
// the models at once; a debounced refetch then brings the details).

import { api, EventStream } from './api.js';
import { debounce, isNum } from './ui.js';

export const events = new EventStream('/api/events');

const PATHS = { status: '/api/status', fleet: '/api/fleet', models: '/api/models' };
const data = { status: null, fleet: null, models: null };
const errors = { status: null, fleet: null, models: null };
const listeners = new Map();
const running = {};
const again = {};

export const get = (topic) => data[topic];
export const errorOf = (topic) => errors[topic];

/** Call fn(value) on every change of `topic` (status, fleet, models, request); returns the unsubscribe. */
export function subscribe(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
  return () => listeners.get(topic).delete(fn);
}

function publish(topic, value) {
  for (const fn of listeners.get(topic) || []) {
    try {
      fn(value);
    } catch (exc) {
      console.error(`${topic} view failed`, exc);
    }
  }
}

/** Fetch `topic` again (one at a time; a call while one runs asks for one more after it). */
export async function refresh(topic) {
  if (running[topic]) {
    again[topic] = true;
    return running[topic];
  }
  running[topic] = (async () => {
    try {
      const value = await api(PATHS[topic]);
      data[topic] = topic === 'models' ? withDeadlines(value.models || []) : value;
      errors[topic] = null;
    } catch (exc) {
      errors[topic] = exc;
    }
    publish(topic, data[topic]);
  })();
  try {
    await running[topic];
  } finally {
    running[topic] = null;
  }
  if (again[topic]) {
    again[topic] = false;
    return refresh(topic);
  }
  return data[topic];
}

/** The value now, fetched first if there is none yet. */
export async function ensure(topic) {
  if (data[topic] === null) await refresh(topic);
  return data[topic];
}

export function refreshAll() {
  return Promise.all(Object.keys(PATHS).map(refresh));
}

// --- models: countdown deadlines, and patches from events ----------------------------------

/** Wall-clock ms when a node's entry changes by itself: a cooling model unloads, a warm-up ends. */
function deadlineOf(entry, fetchedAt) {
  if (entry.state === 'cooling') {
    if (isNum(entry.until)) return entry.until;
    if (isNum(entry.seconds_left)) return fetchedAt + entry.seconds_left * 1000;
  }
  if ((entry.state === 'warming' || entry.state === 'fetching') && isNum(entry.since) && isNum(entry.eta)) {
    return entry.since + entry.eta * 1000;
  }
  return null;
}

function withDeadlines(models) {
  const now = Date.now();
  for (const m of models) for (const n of m.nodes || []) n.deadline = deadlineOf(n, now);
  return models;
}

const MESH_RANK = ['hot', 'cooling', 'warming', 'fetching', 'unloading', 'failed', 'cold'];

/** Apply one model_state record to the models list; false when the model is not listed. */
function patchModel(rec) {
  const models = data.models;
  if (!models) return false;
  const model = models.find((m) => m.model === rec.model);
  if (!model) return false;
  model.nodes = model.nodes || [];
  const i = model.nodes.findIndex((n) => n.node_id === rec.node_id);
  if (rec.state === null || rec.state === undefined) {
    if (i >= 0) model.nodes.splice(i, 1);
  } else {
    const entry = i >= 0 ? model.nodes[i] : { node_id: rec.node_id, rpm: 0, progress: null };
    Object.assign(entry, {
      state: rec.state,
      since: rec.since ?? null,
      eta: rec.eta ?? null,
      until: rec.until ?? null,
      pinned: Boolean(rec.pinned),
      cause: rec.cause ?? null,
    });
    if (rec.state !== 'warming' && rec.state !== 'fetching') entry.progress = null;
    entry.seconds_left = null;
    entry.deadline = deadlineOf(entry, Date.now());
    if (i < 0) {
      model.nodes.push(entry);
      model.nodes.sort((a, b) => (a.node_id < b.node_id ? -1 : 1));
    }
  }
  // the mesh-wide state: the best of the nodes' (an endpoint-only model keeps its own)
  if (model.nodes.length && model.state !== 'cloud') {
    const ranks = model.nodes.map((n) => MESH_RANK.indexOf(n.state)).filter((r) => r >= 0);
    if (ranks.length) model.state = MESH_RANK[Math.min(...ranks)];
  }
  return true;
}

const soon = {
  status: debounce(() => refresh('status'), 700),
  fleet: debounce(() => refresh('fleet'), 700),
  models: debounce(() => refresh('models'), 900),
};

events.on('snapshot', (ev) => {
  for (const rec of ev.models || []) patchModel(rec);
  if (data.models) publish('models', data.models);
  soon.models();
  soon.status();
  soon.fleet();
});

events.on('model_state', (ev) => {
  if (patchModel(ev)) publish('models', data.models);
  soon.models();
  soon.status();
});

for (const type of ['node_joined', 'node_left']) {
  events.on(type, (ev) => {
    publish('membership', ev);
    refresh('status');
    refresh('fleet');
    soon.models();
  });
}

events.on('request', (ev) => publish('request', ev.row || ev));
