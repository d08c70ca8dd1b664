// pages/chat.js: a playground: pick a model, stream an answer through the mesh (SSE
// chunks of /v1/chat/completions read from the fetch body), see which node answered.
// Model output is only ever set as text. The page's DOM is kept between visits, so a
// conversation (or an answer still streaming) survives a trip to another page.

import { authHeaders, errorOf, readSSE, api } from '../api.js';
import { h, fill, icon, toast, toastError, fmtNum, fmtMs, shortId, debounce } from '../ui.js';

let view = null; // the page, built once

export function mount(root, { store }) {
  if (!view) view = build(store);
  root.append(view.el);
  view.attach();
  return () => view.detach();
}

function build(store) {
  const messages = []; // {role, content}
  let controller = null;

  // --- settings ---
  const model = h('select', { class: 'input', tid: 'chat-model', id: 'chat-model' }, h('option', { value: '' }, 'Loading models…'));
  const system = h('textarea', { class: 'input', tid: 'chat-system', id: 'chat-system', rows: '4', placeholder: 'You are a helpful assistant.' });
  const maxTokens = h('input', { class: 'input', type: 'number', min: '1', max: '32768', step: '1', value: '512', tid: 'chat-max-tokens', id: 'chat-max-tokens' });
  const temperature = h('input', { class: 'input', type: 'number', min: '0', max: '2', step: '0.1', value: '0.7', tid: 'chat-temperature', id: 'chat-temperature' });
  const modelNote = h('p', { class: 'muted small', id: 'chat-model-note' }, '\u00a0');
  const clear = h('button', { class: 'btn btn-ghost btn-sm', type: 'button', tid: 'chat-clear' }, icon('trash'), 'New chat');

  // --- conversation ---
  const log = h('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
  const empty = h('div', { class: 'chat-empty' },
    h('div', { class: 'empty-title' }, 'Talk to the mesh'),
    h('p', { class: 'muted' }, 'Pick a model and send a message. A cold model is loaded by the node the mesh places it on; the answer streams from whichever node serves it.'));
  log.append(empty);
  const input = h('textarea', { class: 'input chat-input', tid: 'chat-input', id: 'chat-input', rows: '2', placeholder: 'Message…  (Enter to send, Shift+Enter for a new line)', 'aria-label': 'Message' });
  const send = h('button', { class: 'btn btn-primary', type: 'submit', tid: 'chat-send' }, icon('send'), h('span', {}, 'Send'));
  const stop = h('button', { class: 'btn btn-danger', type: 'button', tid: 'chat-stop', disabled: true }, icon('stop'), h('span', {}, 'Stop'));
  const composer = h('form', { class: 'composer', novalidate: true }, input, h('div', { class: 'composer-btns' }, stop, send));

  const el = h('div', { class: 'chat-layout' },
    h('aside', { class: 'card chat-settings', 'aria-label': 'Chat settings' },
      h('div', { class: 'card-head' }, h('h2', { class: 'section-title' }, 'Settings'), clear),
      h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Model'), model),
      modelNote,
      h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'System prompt'), system),
      h('div', { class: 'form-row' },
        h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Max tokens'), maxTokens),
        h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Temperature'), temperature))),
    h('section', { class: 'card chat-main', 'aria-label': 'Conversation' }, log, composer));

  const page = h('div', { class: 'page-inner' },
    h('header', { class: 'page-head' },
      h('div', {}, h('h1', { class: 'page-title' }, 'Chat'),
        h('p', { class: 'page-sub' }, 'A playground on the mesh\'s OpenAI-compatible API: /v1/chat/completions, streamed.'))),
    el);

  // --- models ---
  let catalog = [];
  const describe = (m) => {
    const st = m.meshllm?.state || (m.meshllm?.warm ? 'hot' : 'cold');
    return `${m.id}  ·  ${st}`;
  };
  const loadModels = async () => {
    try {
      const answer = await api('/v1/models');
      catalog = answer.data || [];
    } catch (exc) {
      fill(model, h('option', { value: '' }, 'No models (the node did not answer)'));
      modelNote.textContent = exc.message;
      return;
    }
    const chosen = model.value || localStorage.getItem('meshllm.chatModel') || '';
    const local = catalog.filter((m) => m.meshllm?.state !== 'cloud');
    const cloud = catalog.filter((m) => m.meshllm?.state === 'cloud');
    const opt = (m) => h('option', { value: m.id, selected: m.id === chosen }, describe(m));
    if (!catalog.length) {
      fill(model, h('option', { value: '' }, 'No model in the mesh'));
    } else {
      fill(model,
        local.length ? h('optgroup', { label: 'Mesh models' }, local.map(opt)) : null,
        cloud.length ? h('optgroup', { label: 'Cloud' }, cloud.map(opt)) : null);
      if (!catalog.some((m) => m.id === chosen)) {
        const warm = catalog.find((m) => m.meshllm?.warm) || catalog[0];
        model.value = warm.id;
      }
    }
    noteModel();
  };
  const noteModel = () => {
    const m = catalog.find((x) => x.id === model.value);
    if (!m) {
      modelNote.textContent = '\u00a0';
      return;
    }
    const st = m.meshllm?.state;
    const nodes = m.meshllm?.nodes || [];
    modelNote.textContent = st === 'cloud'
      ? `Cloud model, reached through ${nodes.length} node${nodes.length === 1 ? '' : 's'} with its key.`
      : nodes.length
        ? `Served by ${nodes.map((n) => shortId(n)).join(', ')}.`
        : 'Cold: the first request loads it (that takes a moment).';
  };
  model.addEventListener('change', () => {
    try {
      localStorage.setItem('meshllm.chatModel', model.value);
    } catch {
      /* not kept */
    }
    noteModel();
  });
  const modelsSoon = debounce(loadModels, 1000);

  // --- messages ---
  const bubble = (role, text) => {
    empty.remove();
    const content = h('div', { class: 'msg-content' });
    content.textContent = text;
    const meta = h('div', { class: 'msg-meta' });
    const el = h('div', { class: ['msg', `msg-${role}`], tid: 'chat-message', 'data-role': role },
      h('div', { class: 'msg-role' }, role === 'user' ? 'You' : 'Assistant'), content, meta);
    log.append(el);
    log.scrollTop = log.scrollHeight;
    return { el, content, meta };
  };
  const stick = () => {
    if (log.scrollHeight - log.scrollTop - log.clientHeight < 120) log.scrollTop = log.scrollHeight;
  };

  const setBusy = (busy) => {
    send.disabled = busy;
    stop.disabled = !busy;
    composer.classList.toggle('busy', busy);
  };

  const ask = async () => {
    const text = input.value.trim();
    if (!text || controller) return;
    if (!model.value) {
      toast('Pick a model first', 'error', { timeout: 3000 });
      return;
    }
    input.value = '';
    messages.push({ role: 'user', content: text });
    bubble('user', text);
    const out = bubble('assistant', '');
    out.el.classList.add('streaming');
    const status = h('span', { class: 'msg-status' }, 'waiting for the mesh…');
    fill(out.meta, status);

    const body = {
      model: model.value,
      stream: true,
      stream_options: { include_usage: true },
      messages: [...(system.value.trim() ? [{ role: 'system', content: system.value.trim() }] : []), ...messages],
    };
    const mt = Number(maxTokens.value);
    if (mt > 0) body.max_tokens = Math.round(mt);
    const temp = Number(temperature.value);
    if (temperature.value !== '' && Number.isFinite(temp)) body.temperature = temp;

    controller = new AbortController();
    setBusy(true);
    // A stream that had to wait for its model to load goes out before a node is picked,
    // without the x-meshllm-node header: then the node is read from the ": loading …
    // on NODE" comments, or from this request's row in the history (a `request` event).
    const startedWall = Date.now() / 1000;
    const rows = [];
    const offRows = store.subscribe('request', (row) => rows.push(row));
    const loadingOn = new Set();
    const started = performance.now();
    let firstAt = 0;
    let lastAt = 0;
    let chunks = 0;
    let usage = null;
    let answer = '';
    let node = '';
    let served = '';
    let finish = '';
    try {
      const response = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      node = response.headers.get('x-meshllm-node') || '';
      served = response.headers.get('x-meshllm-model') || '';
      if (!response.ok) throw await errorOf(response);
      if (!response.body) throw new Error('the answer has no body');
      status.textContent = 'thinking…';
      for await (const msg of readSSE(response.body, controller.signal)) {
        if (msg.comment !== undefined) {
          if (/^loading/i.test(msg.comment)) {
            status.textContent = msg.comment;
            for (const m of msg.comment.matchAll(/\bon ([0-9a-f]{8,64})\b/g)) loadingOn.add(m[1]);
          }
          continue;
        }
        if (msg.data === '[DONE]') break;
        let chunk;
        try {
          chunk = JSON.parse(msg.data);
        } catch {
          continue;
        }
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        if (chunk.usage) usage = chunk.usage;
        const choice = (chunk.choices || [])[0];
        if (choice?.finish_reason) finish = choice.finish_reason;
        const delta = choice?.delta?.content ?? choice?.text ?? '';
        if (delta) {
          const now = performance.now();
          if (!firstAt) {
            firstAt = now;
            status.textContent = 'streaming…';
          }
          lastAt = now;
          chunks += 1;
          answer += delta;
          out.content.textContent = answer; // text only: never markup from a model
          stick();
        }
      }
      messages.push({ role: 'assistant', content: answer });
    } catch (exc) {
      if (exc.name === 'AbortError') {
        if (answer) messages.push({ role: 'assistant', content: answer });
        finish = 'stopped';
      } else {
        out.el.classList.add('msg-error');
        if (!answer) out.content.textContent = exc.message || String(exc);
        toastError(exc, 'Chat');
        finish = 'error';
        messages.pop(); // the question is not part of the conversation when it got no answer
      }
    } finally {
      controller = null;
      setBusy(false);
      out.el.classList.remove('streaming');
      let guessed = false;
      if (!node && finish !== 'error') {
        node = await servingNodeOf(rows, body.model, startedWall);
        if (!node && loadingOn.size === 1) node = [...loadingOn][0];
        guessed = Boolean(node);
      }
      offRows();
      const tokens = usage?.completion_tokens ?? chunks;
      const genS = lastAt > firstAt ? (lastAt - firstAt) / 1000 : 0;
      const tps = genS > 0 && tokens > 1 ? (tokens - 1) / genS : null;
      const selfId = store.get('status')?.node_id;
      fill(out.meta,
        node ? h('span', { class: 'msg-node', tid: 'chat-node', 'data-node-id': node, title: guessed ? `answered by node ${node} (from the history: the model was loading when the answer began)` : `answered by node ${node}` },
          h('span', { class: 'health-dot', 'aria-hidden': 'true' }), node === selfId ? `${shortId(node)} (this node)` : shortId(node)) : null,
        served ? h('span', { class: 'mono' }, served) : null,
        firstAt ? h('span', {}, `TTFT ${fmtMs(firstAt - started)}`) : null,
        tokens ? h('span', {}, `${tokens} token${tokens === 1 ? '' : 's'}${usage ? '' : ' (chunks)'}`) : null,
        tps ? h('span', { tid: 'chat-tps' }, `${fmtNum(tps, 1)} tok/s`) : null,
        finish && finish !== 'stop' ? h('span', { class: ['badge', 'tiny', finish === 'error' && 'badge-err'] }, finish) : null);
      stick();
      if (finish !== 'error') input.focus();
    }
  };

  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    ask();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ask();
    }
  });
  stop.addEventListener('click', () => controller?.abort());
  clear.addEventListener('click', () => {
    controller?.abort();
    messages.length = 0;
    fill(log, empty);
    input.focus();
  });

  let offs = [];
  return {
    el: page,
    attach() {
      loadModels();
      offs = [store.subscribe('models', modelsSoon), store.subscribe('membership', modelsSoon)];
      store.ensure('models');
      store.ensure('status');
      // a desktop gets the cursor in the box; a phone keeps its keyboard down
      if (!controller && window.matchMedia('(pointer: fine)').matches) setTimeout(() => input.focus({ preventScroll: true }), 0);
    },
    detach() {
      offs.forEach((off) => off());
      modelsSoon.cancel();
    },
  };
}

/** The serving node of the chat request that began at `since`, from the `request`
 * events (only with the admin token): waits a moment for the row to be recorded. */
async function servingNodeOf(rows, model, since) {
  const pick = () => rows.find((r) => r.path === '/v1/chat/completions' && r.time >= since - 1
    && (r.model === model || !model) && r.serving_node)?.serving_node;
  for (let i = 0; i < 15 && !pick(); i += 1) await new Promise((resolve) => setTimeout(resolve, 100));
  return pick() || '';
}
