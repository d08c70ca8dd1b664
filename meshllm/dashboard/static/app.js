// app.js: the shell: hash router (#/fleet, #/models, …), navigation, theme toggle,
// the admin token dialog, the live indicator and the node badge in the header.

import { adoptTokenFromUrl, getToken, onTokenChange, setToken } from './api.js';
import * as store from './store.js';
import { h, icon, fill, toast } from './ui.js';
import * as fleet from './pages/fleet.js';
import * as models from './pages/models.js';
import * as endpoints from './pages/endpoints.js';
import * as requests from './pages/requests.js';
import * as usage from './pages/usage.js';
import * as chat from './pages/chat.js';
import * as keys from './pages/keys.js';

const PAGES = [
  { id: 'fleet', title: 'Fleet', icon: 'fleet', page: fleet },
  { id: 'models', title: 'Models', icon: 'models', page: models },
  { id: 'endpoints', title: 'Endpoints', icon: 'endpoints', page: endpoints },
  { id: 'requests', title: 'Requests', icon: 'requests', page: requests },
  { id: 'usage', title: 'Usage', icon: 'usage', page: usage },
  { id: 'chat', title: 'Chat', icon: 'chat', page: chat },
  { id: 'keys', title: 'Keys', icon: 'keys', page: keys },
];

const main = document.getElementById('main');
let current = null; // {id, unmount}

// --- theme ------------------------------------------------------------------------------

const THEME_KEY = 'meshllm.theme';
const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

function storedTheme() {
  try {
    return localStorage.getItem(THEME_KEY);
  } catch {
    return null;
  }
}

function applyTheme(theme) {
  document.documentElement.setAttribute('data-theme', theme);
  const btn = document.getElementById('theme-toggle');
  const next = theme === 'dark' ? 'light' : 'dark';
  fill(btn, icon(theme === 'dark' ? 'sun' : 'moon'));
  btn.setAttribute('aria-label', `Switch to ${next} theme`);
  btn.title = `Switch to ${next} theme`;
  window.dispatchEvent(new CustomEvent('themechange', { detail: theme }));
}

function initTheme() {
  const stored = storedTheme();
  applyTheme(stored === 'light' || stored === 'dark' ? stored : darkQuery.matches ? 'dark' : 'light');
  darkQuery.addEventListener('change', (e) => {
    if (!storedTheme()) applyTheme(e.matches ? 'dark' : 'light');
  });
  document.getElementById('theme-toggle').addEventListener('click', () => {
    const next = document.documentElement.getAttribute('data-theme') === 'dark' ? 'light' : 'dark';
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch {
      /* not kept */
    }
    applyTheme(next);
  });
}

// --- navigation -------------------------------------------------------------------------

function buildNav() {
  const nav = document.getElementById('nav');
  const list = h('ul', { class: 'nav-list' });
  for (const p of PAGES) {
    list.append(
      h('li', {},
        h('a', { class: 'nav-link', href: `#/${p.id}`, tid: `nav-${p.id}`, 'data-page': p.id, title: p.title },
          icon(p.icon, 'icon nav-icon'),
          h('span', { class: 'nav-label' }, p.title))),
    );
  }
  nav.append(list, h('div', { class: 'nav-foot', id: 'nav-foot' }));
}

function routeOf() {
  const hash = location.hash.replace(/^#\/?/, '');
  const id = hash.split(/[?&/]/)[0];
  return PAGES.find((p) => p.id === id) || PAGES[0];
}

function render() {
  const route = routeOf();
  if (current) {
    try {
      current.unmount?.();
    } catch (exc) {
      console.error(exc);
    }
  }
  const nav = document.getElementById('nav');
  for (const a of document.querySelectorAll('.nav-link')) {
    const on = a.dataset.page === route.id;
    a.classList.toggle('active', on);
    if (on) {
      a.setAttribute('aria-current', 'page');
      // on a phone the nav is a strip that scrolls sideways: bring the page's link into view
      if (nav.scrollWidth > nav.clientWidth) nav.scrollLeft = a.offsetLeft - (nav.clientWidth - a.offsetWidth) / 2;
    } else a.removeAttribute('aria-current');
  }
  document.title = `${route.title} · meshllm`;
  const root = h('div', { class: ['page', `page-${route.id}`], 'data-page': route.id });
  main.replaceChildren(root);
  const unmount = route.page.mount(root, { store, remount: render });
  current = { id: route.id, unmount };
}

// Buttons inside page errors: open the token dialog, or retry the page.
main.addEventListener('click', (e) => {
  const btn = e.target.closest('[data-action]');
  if (!btn) return;
  if (btn.dataset.action === 'open-token') openTokenDialog();
  else if (btn.dataset.action === 'retry') render();
});

// --- the admin token ----------------------------------------------------------------------

const tokenDialog = document.getElementById('token-dialog');
const tokenInput = document.getElementById('token-input');

function openTokenDialog() {
  tokenInput.value = getToken();
  document.getElementById('token-state').textContent = getToken()
    ? 'A token is set for this tab.'
    : 'No token is set: the page is read-only.';
  document.getElementById('token-clear').disabled = !getToken();
  tokenDialog.showModal();
  tokenInput.focus();
  tokenInput.select();
}

function initToken() {
  document.getElementById('token-btn').addEventListener('click', openTokenDialog);
  document.getElementById('token-cancel').addEventListener('click', () => tokenDialog.close());
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = tokenInput.value.trim();
    tokenDialog.close();
    if (value !== getToken()) {
      setToken(value);
      toast(value ? 'Admin token saved for this tab' : 'Signed out', 'ok', { timeout: 3000 });
    }
  });
  document.getElementById('token-clear').addEventListener('click', () => {
    tokenDialog.close();
    setToken('');
    toast('Signed out: the page is read-only', 'ok', { timeout: 3000 });
  });
  tokenDialog.addEventListener('click', (e) => {
    if (e.target === tokenDialog) tokenDialog.close();
  });
  onTokenChange(() => {
    updateTokenButton();
    store.events.restart(); // request events need the token
    store.refreshAll();
    render();
  });
  updateTokenButton();
}

function updateTokenButton() {
  const btn = document.getElementById('token-btn');
  const has = Boolean(getToken());
  btn.classList.toggle('has-token', has);
  fill(btn, icon('key'), h('span', { class: 'token-btn-label' }, has ? 'Admin' : 'Read-only'));
  btn.title = has ? 'Admin token set: change or sign out' : 'Enter the admin token';
  btn.setAttribute('aria-label', btn.title);
}

// --- header: live indicator and this node --------------------------------------------------

function initHeader() {
  const live = document.getElementById('live');
  store.events.onState((state) => {
    live.dataset.state = state;
    live.textContent = state;
    live.title = state === 'live' ? 'receiving the mesh\'s live events' : state === 'offline' ? 'the event stream is down: reconnecting' : 'connecting to the event stream';
  });
  store.subscribe('status', (st) => {
    const badge = document.getElementById('node-badge');
    // the node stopped answering: its event stream can't be trusted either (a node
    // shutting down keeps pinging it): reconnect, which shows offline until it is back
    if (store.errorOf('status')?.code === 'unreachable' && store.events.state === 'live') store.events.restart();
    if (!st) {
      badge.textContent = 'node unreachable';
      badge.classList.add('bad');
      return;
    }
    badge.classList.remove('bad');
    fill(badge,
      h('span', { class: 'mono' }, st.node_id),
      h('span', { class: 'sep' }, '·'), st.role,
      h('span', { class: 'sep' }, '·'), `v${st.version}`);
    badge.title = `this node: ${st.node_id} (${st.role}, meshllm ${st.version}), HTTP port ${st.http_port}`;
    fill(document.getElementById('nav-foot'),
      h('div', { class: 'nav-foot-line' }, `${1 + (st.peers || []).length} node${st.peers?.length ? 's' : ''} in mesh`),
      h('div', { class: 'nav-foot-line mono muted' }, `mesh ${st.mesh_id || '—'}`));
  });
}

// --- start ---------------------------------------------------------------------------------

adoptTokenFromUrl();
buildNav();
initTheme();
initToken();
initHeader();
window.addEventListener('hashchange', () => {
  if (/^#(.*&)?token=/.test(location.hash)) adoptTokenFromUrl(); // a pasted link with a token
  else render();
});
render();
store.refresh('status');
store.events.start();
