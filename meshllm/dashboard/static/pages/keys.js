// pages/keys.js: the mesh's API keys (admin): list, create (the secret is shown once),
// revoke. Keys are statements signed by the mesh owner key: only the owner's machines
// create or revoke them.

import { api, getToken, ApiError } from '../api.js';
import {
  h, fill, icon, patchList, pageError, emptyState, confirmDialog, toast, toastError, copyText,
  fmtAgo, fmtDateTime, fmtInt, isNum,
} from '../ui.js';

let showRevoked = false;

export function mount(root, { store }) {
  const errorBox = h('div');
  const secretBox = h('div', { class: 'secret-slot' });
  const body = h('tbody');
  const count = h('span', { class: 'muted small' }, '\u00a0');
  const revokedToggle = h('input', { type: 'checkbox', tid: 'key-show-revoked', checked: showRevoked });
  const table = h('table', { class: 'table keys-table stack-sm' },
    h('colgroup', {}, ['w-id', 'w-name', 'w-scope', 'w-models', 'w-exp', 'w-limits', 'w-use', 'w-created', 'w-act'].map((c) => h('col', { class: c }))),
    h('thead', {}, h('tr', {}, ['Key id', 'Name', 'Scope', 'Models', 'Expires', 'Limits', 'Last minute', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
    body);

  let keys = null;
  const draw = () => {
    if (!keys) return;
    const shown = keys.filter((k) => showRevoked || (!k.revoked && !k.expired));
    if (!shown.length) {
      fill(body, h('tr', { class: 'empty-row' }, h('td', { colspan: '9' },
        emptyState(keys.length ? 'No active keys' : 'No API keys', 'While the mesh has no key, a node on 127.0.0.1 is open to local clients. Once it has one, every node wants a key for inference.'))));
    } else {
      if (body.querySelector('.empty-row')) body.replaceChildren();
      patchList(body, shown, (k) => k.id, (k) => keyRow(k, load));
    }
    const active = keys.filter((k) => !k.revoked && !k.expired).length;
    count.textContent = `${active} active · ${keys.length - active} revoked or expired`;
  };

  const load = async () => {
    for (const el of content) el.hidden = !getToken();
    if (!getToken()) {
      fill(errorBox, pageError(new ApiError('', 401, 'unauthorized'), 'API keys'));
      return;
    }
    try {
      const answer = await api('/api/keys');
      keys = (answer.keys || []).slice().sort((a, b) => (b.created || 0) - (a.created || 0));
      fill(errorBox);
      draw();
    } catch (exc) {
      fill(errorBox, pageError(exc, 'API keys'));
    }
  };

  revokedToggle.addEventListener('change', () => {
    showRevoked = revokedToggle.checked;
    draw();
  });

  const form = createForm(store, secretBox, () => load());
  const tableCard = h('div', { class: 'card table-card' }, h('div', { class: 'table-scroll' }, table));
  const foot = h('div', { class: 'table-foot' }, count, h('label', { class: 'check' }, revokedToggle, 'Show revoked and expired'));
  const content = [form, tableCard, foot];
  root.append(
    h('header', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'page-title' }, 'API keys'),
        h('p', { class: 'page-sub' }, 'Keys work on every node of the mesh; rate limits hold mesh-wide. Only the mesh owner\'s machines create or revoke them.'))),
    errorBox,
    form,
    secretBox,
    tableCard,
    foot,
  );
  load();
  return () => {};
}

function keyRow(k, reload) {
  const dead = k.revoked || k.expired;
  const revoke = h('button', {
    class: 'btn btn-sm btn-danger-ghost', type: 'button', tid: 'key-revoke', disabled: k.revoked,
    'aria-label': `Revoke key ${k.id}`,
  }, h('span', {}, k.revoked ? 'Revoked' : 'Revoke'));
  revoke.addEventListener('click', async () => {
    const ok = await confirmDialog({
      title: `Revoke key ${k.id}${k.name ? ` (${k.name})` : ''}?`,
      body: [h('p', {}, 'It stops working on every node of the mesh within a hop per link, for good. A revoked key cannot be restored.')],
      ok: 'Revoke',
      danger: true,
    });
    if (!ok) return;
    revoke.disabled = true;
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
      toast(`Revoked key ${k.id}`, 'ok', { timeout: 3000 });
      reload();
    } catch (exc) {
      revoke.disabled = false;
      toastError(exc, 'Revoking the key');
    }
  });
  const limits = [isNum(k.rpm) ? `${fmtInt(k.rpm)} rpm` : null, isNum(k.tpm) ? `${fmtInt(k.tpm)} tpm` : null].filter(Boolean).join(' · ');
  const use = k.usage_minute || {};
  return h('tr', { tid: 'key-row', 'data-key-id': k.id, class: dead && 'is-dead' },
    h('td', { 'data-label': 'Key id', class: 'mono' }, k.id),
    h('td', { 'data-label': 'Name', class: 'ellipsis', title: k.name || '' }, k.name || h('span', { class: 'muted' }, '—')),
    h('td', { 'data-label': 'Scope' }, h('span', {}, h('span', { class: ['badge', k.scope === 'admin' ? 'badge-warn' : 'badge-accent'] }, k.scope),
      k.revoked ? h('span', { class: 'badge badge-err tiny' }, 'revoked') : k.expired ? h('span', { class: 'badge tiny' }, 'expired') : null)),
    h('td', { 'data-label': 'Models', class: 'ellipsis', title: (k.models || []).join('\n') }, (k.models || []).length ? k.models.join(', ') : h('span', { class: 'muted' }, 'all')),
    h('td', { 'data-label': 'Expires', title: isNum(k.expires) ? fmtDateTime(k.expires) : 'never' }, isNum(k.expires) ? fmtAgo(k.expires) : h('span', { class: 'muted' }, 'never')),
    h('td', { 'data-label': 'Limits' }, limits || h('span', { class: 'muted' }, 'none')),
    h('td', { 'data-label': 'Last minute', class: 'mono-num' }, `${fmtInt(use.requests || 0)} req · ${fmtInt(use.tokens || 0)} tok`),
    h('td', { 'data-label': 'Created', title: fmtDateTime(k.created) }, fmtAgo(k.created)),
    h('td', { class: 'actions' }, revoke));
}

function createForm(store, secretBox, reload) {
  const scope = h('select', { class: 'input', tid: 'key-scope', id: 'key-scope' },
    h('option', { value: 'inference' }, 'inference (the /v1 routes)'), h('option', { value: 'admin' }, 'admin (also every admin route)'));
  const name = h('input', { class: 'input', tid: 'key-name', id: 'key-name', type: 'text', placeholder: 'ci', autocomplete: 'off', maxlength: '64' });
  const models = h('input', { class: 'input', tid: 'key-models', id: 'key-models', type: 'text', placeholder: 'all models (or a, b, …)', autocomplete: 'off', list: 'dl-key-models' });
  const modelList = h('datalist', { id: 'dl-key-models' });
  const expires = h('input', { class: 'input', tid: 'key-expires', id: 'key-expires', type: 'text', placeholder: 'never (or 30d, 12h, 2w)', autocomplete: 'off', list: 'dl-key-expires' });
  const expiresList = h('datalist', { id: 'dl-key-expires' }, ['1d', '7d', '30d', '90d', '365d'].map((v) => h('option', { value: v })));
  const rpm = h('input', { class: 'input', tid: 'key-rpm', id: 'key-rpm', type: 'number', min: '1', step: '1', placeholder: 'no limit' });
  const tpm = h('input', { class: 'input', tid: 'key-tpm', id: 'key-tpm', type: 'number', min: '1', step: '1', placeholder: 'no limit' });
  const create = h('button', { class: 'btn btn-primary', type: 'submit', tid: 'key-create' }, icon('plus'), 'Create key');
  store.ensure('models').then((list) => fill(modelList, (list || []).map((m) => h('option', { value: m.model }))));

  const form = h('form', { class: 'card form-card', tid: 'key-form', novalidate: true, 'aria-label': 'Create an API key' },
    h('div', { class: 'card-head' }, h('h2', { class: 'section-title' }, 'Create a key')),
    h('div', { class: 'form-grid key-grid' },
      field('Scope', scope), field('Name', name), field('Models', models, 'span-2'),
      field('Expires in', expires), field('Requests / min', rpm), field('Tokens / min', tpm),
      h('div', { class: 'form-submit' }, create)),
    modelList, expiresList);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { scope: scope.value };
    if (name.value.trim()) body.name = name.value.trim();
    const list = models.value.split(',').map((x) => x.trim()).filter(Boolean);
    if (list.length) body.models = list;
    if (expires.value.trim() && expires.value.trim() !== 'never') body.expires = expires.value.trim();
    if (rpm.value) body.rpm = Math.round(Number(rpm.value));
    if (tpm.value) body.tpm = Math.round(Number(tpm.value));
    create.disabled = true;
    try {
      const key = await api('/api/keys', { method: 'POST', body });
      showSecret(secretBox, key);
      name.value = '';
      models.value = '';
      expires.value = '';
      rpm.value = '';
      tpm.value = '';
      reload();
    } catch (exc) {
      toastError(exc, 'Creating the key');
    } finally {
      create.disabled = false;
    }
  });
  return form;
}

function showSecret(box, key) {
  const secret = h('code', { class: 'secret-code', tid: 'key-secret', tabindex: '0', 'aria-label': 'The new key' }, key.key);
  const select = () => {
    const range = document.createRange();
    range.selectNodeContents(secret);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  };
  const copy = h('button', { class: 'btn btn-primary', type: 'button', tid: 'key-copy' }, icon('copy'), 'Copy');
  copy.addEventListener('click', async () => {
    const ok = await copyText(key.key);
    if (!ok) select();
    toast(ok ? 'Key copied' : 'Select and copy it by hand', ok ? 'ok' : 'error', { timeout: 2500 });
  });
  const done = h('button', { class: 'btn btn-ghost', type: 'button', tid: 'key-secret-done' }, 'I saved it');
  done.addEventListener('click', () => fill(box));
  secret.addEventListener('focus', select);
  fill(box, h('div', { class: 'card secret-card', role: 'status' },
    h('div', { class: 'secret-title' }, `Key ${key.id}${key.name ? ` (${key.name})` : ''} created`),
    h('p', { class: 'small' }, 'Copy it now: it is shown this once, and the mesh keeps only its hash. Send it as ', h('code', {}, 'Authorization: Bearer …'), ' or ', h('code', {}, 'x-api-key'), '.'),
    h('div', { class: 'secret-row' }, secret, copy, done)));
  secret.focus();
}

function field(label, input, cls) {
  return h('label', { class: ['field', cls] }, h('span', { class: 'field-label' }, label), input);
}
