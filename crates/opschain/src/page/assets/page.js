// The page's one script: what is live. The change list and a change's steps are polled from
// the JSON:API; a log is paged, searched and followed through the API (`log_lines`, and its
// server-sent events), with at most a few thousand lines in the document at once.
'use strict';

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const POLL_MS = 2000;

  /** Fetches an API document; a lost session goes back to the login page. */
  async function api(url, options = {}) {
    const response = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/vnd.api+json' }, ...options });
    if (response.status === 401) {
      location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash);
      throw new Error('the session ended');
    }
    if (!response.ok) throw new Error(`${response.status} ${response.statusText} from ${url}`);
    return response.json();
  }

  // ---- Times -------------------------------------------------------------------------------

  /** A duration as people read it (the same words as the server's). */
  function duration(secs) {
    secs = Math.max(0, secs);
    if (secs < 1) return `${Math.round(secs * 1000)} ms`;
    const whole = Math.floor(secs);
    if (whole < 60) return `${whole} s`;
    const pad = (n) => String(n).padStart(2, '0');
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${pad(whole % 60)} s`;
    return `${Math.floor(whole / 3600)} h ${pad(Math.floor((whole % 3600) / 60))} min`;
  }

  /** A stored time (`2026-12-08T00:12:33.123Z`) as the server prints it. */
  const when = (time) => (time ? time.split('.')[0].replace('Z', '').replace('T', ' ') : '');

  /** Keeps the durations of what runs ticking (an element with a start and no end). */
  function tick() {
    const now = Date.now();
    for (const el of $$('.duration[data-start]')) {
      if (!el.dataset.start || el.dataset.end) continue;
      const start = Date.parse(el.dataset.start);
      if (!Number.isNaN(start)) el.textContent = duration((now - start) / 1000);
    }
  }

  /** Sets an element's start and end (an empty end: it runs), and its text when it has ended. */
  function setSpan(el, start, end, running) {
    el.dataset.start = start || '';
    el.dataset.end = running ? '' : end || start || '';
    if (!running && start) el.textContent = duration((Date.parse(end || start) - Date.parse(start)) / 1000);
    if (!start) el.textContent = '';
  }

  /** Sets a status badge's word and colour. */
  function setStatus(el, status) {
    if (!el || el.textContent === status) return;
    el.textContent = status;
    el.className = el.className.replace(/\bs-\w+/g, '').trim() + ` s-${status}`;
  }

  const FINAL = new Set(['success', 'error', 'cancelled']);

  // ---- Confirmations -----------------------------------------------------------------------

  /** A form marked `confirm` asks first, in a dialog whose default is No. */
  function confirmations() {
    for (const form of $$('form.confirm')) {
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        const dialog = document.createElement('dialog');
        dialog.setAttribute('aria-labelledby', 'confirm-text');
        const text = document.createElement('p');
        text.id = 'confirm-text';
        text.textContent = form.dataset.confirm;
        const buttons = document.createElement('div');
        buttons.className = 'buttons';
        const no = document.createElement('button');
        no.type = 'button';
        no.id = 'confirm-no';
        no.textContent = 'No';
        const yes = document.createElement('button');
        yes.type = 'button';
        yes.id = 'confirm-yes';
        yes.className = form.querySelector('button').className;
        yes.textContent = 'Yes, ' + form.querySelector('button').textContent.toLowerCase();
        buttons.append(no, yes);
        dialog.append(text, buttons);
        document.body.append(dialog);
        no.addEventListener('click', () => dialog.close());
        yes.addEventListener('click', () => { yes.disabled = true; form.submit(); });
        dialog.addEventListener('close', () => dialog.remove());
        dialog.showModal();
        no.focus();
      });
    }
  }

  // ---- The change list ---------------------------------------------------------------------

  /** A cell of the list. */
  function cell(label, ...children) {
    const td = document.createElement('td');
    td.dataset.label = label;
    td.append(...children);
    return td;
  }

  /** The row of a change resource, as the server renders it. */
  function changeRow(resource) {
    const c = resource.attributes;
    const running = !FINAL.has(c.status);
    const tr = document.createElement('tr');
    tr.dataset.id = resource.id;
    const link = document.createElement('a');
    link.href = `/changes/${resource.id}`;
    link.textContent = resource.id;
    const status = document.createElement('span');
    status.className = `status s-${c.status}`;
    status.textContent = c.status;
    const created = document.createElement('time');
    created.dateTime = c.created_at;
    created.textContent = when(c.created_at);
    const span = document.createElement('span');
    span.className = 'duration';
    setSpan(span, c.started_at, c.finished_at, running);
    const rev = document.createElement('span');
    rev.className = 'rev';
    rev.textContent = c.git_rev;
    const commit = document.createElement('code');
    commit.title = c.commit_sha;
    commit.textContent = (c.commit_sha || '').slice(0, 10);
    const action = cell('Action', c.action);
    action.className = 'action';
    tr.append(
      cell('Id', link), cell('Project', c.project_code), cell('Environment', c.environment_code), action, cell('Status', status),
      cell('Started by', c.created_by || '(local CLI)'), cell('Created', created), cell('Duration', span), cell('Revision', rev, ' ', commit),
    );
    return tr;
  }

  /** Keeps the list's first page live. */
  function changeList() {
    const table = $('#changes');
    if (!table || !table.dataset.live) return;
    let seen = JSON.stringify(null);
    const known = new Set($$('tbody tr', table).map((tr) => tr.dataset.id));
    async function poll() {
      if (document.visibilityState === 'visible') {
        try {
          const doc = await api(table.dataset.live);
          const text = JSON.stringify(doc.data);
          if (text !== seen) {
            seen = text;
            const body = document.createElement('tbody');
            for (const resource of doc.data) {
              const row = changeRow(resource);
              if (!known.has(resource.id)) row.classList.add('fresh');
              known.add(resource.id);
              body.append(row);
            }
            table.tBodies[0].replaceWith(body);
            const total = $('#total');
            if (total) total.textContent = doc.data.length;
            const empty = $('#empty');
            if (empty) empty.hidden = doc.data.length > 0;
            tick();
          }
        } catch (e) {
          if (!String(e).includes('session')) console.warn('opschain: cannot refresh the changes:', e.message);
        }
      }
      setTimeout(poll, POLL_MS);
    }
    setTimeout(poll, POLL_MS);
  }

  // ---- A change ----------------------------------------------------------------------------

  /** Keeps a change's statuses and durations live; redraws the page's parts when steps appear or
   *  the change ends (its buttons change). */
  function changePage() {
    const head = $('#change');
    if (!head) return;
    const id = head.dataset.id;
    let status = head.dataset.status;
    async function redraw() {
      const response = await fetch(location.pathname, { credentials: 'same-origin' });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
      for (const selector of ['#change', 'dl.header', '#tree']) {
        const now = $(selector);
        const next = $(selector, fresh);
        if (now && next) now.replaceWith(document.importNode(next, true));
      }
      confirmations();
      tick();
    }
    async function poll() {
      try {
        const doc = await api(`/api/changes/${id}?include=steps`);
        const steps = doc.included || [];
        const drawn = new Set($$('[data-step]').map((el) => el.dataset.step));
        const changed = doc.data.attributes.status !== status || steps.length !== drawn.size || steps.some((s) => !drawn.has(s.id));
        if (changed) {
          status = doc.data.attributes.status;
          await redraw();
        } else {
          for (const step of steps) {
            const a = step.attributes;
            setStatus($(`[data-step-status="${step.id}"]`), a.status);
            const card = $(`[data-step="${step.id}"] > .step`);
            if (card) card.className = `step s-${a.status}`;
            const span = $(`[data-step-duration="${step.id}"]`);
            const running = a.started_at && !a.finished_at && !['success', 'error', 'aborted', 'cancelled'].includes(a.status);
            if (span && (span.dataset.start !== (a.started_at || '') || (!running && !span.dataset.end))) setSpan(span, a.started_at, a.finished_at, running);
          }
        }
      } catch (e) {
        if (!String(e).includes('session')) console.warn('opschain: cannot refresh the change:', e.message);
      }
      if (!FINAL.has(status)) setTimeout(poll, POLL_MS);
    }
    if (!FINAL.has(status)) setTimeout(poll, POLL_MS);
  }

  // ---- ANSI colours ------------------------------------------------------------------------

  // CSI sequences (colours and cursor moves), OSC sequences (titles, links), charset picks, and
  // carriage returns.
  const ESCAPES = /\x1b\[([0-9;:]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r/g;
  const CUBE = [0, 95, 135, 175, 215, 255];

  /** The CSS colour of 256-colour index `n` from 16 up. */
  function color256(n) {
    if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
    n -= 16;
    return `rgb(${CUBE[Math.floor(n / 36)]},${CUBE[Math.floor(n / 6) % 6]},${CUBE[n % 6]})`;
  }

  /** Applies one SGR sequence's parameters to `s`. */
  function sgr(s, params) {
    const p = params === '' ? [0] : params.split(/[;:]/).map((x) => Number(x) || 0);
    for (let i = 0; i < p.length; i++) {
      const n = p[i];
      if (n === 0) { s.b = s.d = s.i = s.u = false; s.fg = s.bg = null; }
      else if (n === 1) s.b = true;
      else if (n === 2) s.d = true;
      else if (n === 3) s.i = true;
      else if (n === 4) s.u = true;
      else if (n === 22) s.b = s.d = false;
      else if (n === 23) s.i = false;
      else if (n === 24) s.u = false;
      else if (n >= 30 && n <= 37) s.fg = n - 30;
      else if (n >= 90 && n <= 97) s.fg = n - 90 + 8;
      else if (n === 39) s.fg = null;
      else if (n >= 40 && n <= 47) s.bg = n - 40;
      else if (n >= 100 && n <= 107) s.bg = n - 100 + 8;
      else if (n === 49) s.bg = null;
      else if ((n === 38 || n === 48) && p[i + 1] === 5) {
        const c = p[i + 2] ?? 0;
        const value = c < 16 ? c : color256(c);
        if (n === 38) s.fg = value; else s.bg = value;
        i += 2;
      } else if ((n === 38 || n === 48) && p[i + 1] === 2) {
        const value = `rgb(${p[i + 2] ?? 0},${p[i + 3] ?? 0},${p[i + 4] ?? 0})`;
        if (n === 38) s.fg = value; else s.bg = value;
        i += 4;
      }
    }
  }

  /** Appends `text` to `parent` with the occurrences of `needle` (lower case) marked. */
  function appendMarked(parent, text, needle) {
    if (!needle) { parent.append(text); return; }
    const lower = text.toLowerCase();
    let at = 0;
    for (let found = lower.indexOf(needle); found !== -1; found = lower.indexOf(needle, at)) {
      if (found > at) parent.append(text.slice(at, found));
      const mark = document.createElement('mark');
      mark.textContent = text.slice(found, found + needle.length);
      parent.append(mark);
      at = found + needle.length;
    }
    if (at < text.length) parent.append(text.slice(at));
  }

  /** Renders a log message with its ANSI colours (and `needle` marked) into `target`. */
  function renderAnsi(target, message, needle) {
    const state = { b: false, d: false, i: false, u: false, fg: null, bg: null };
    let at = 0;
    const flush = (text) => {
      if (!text) return;
      const plain = !state.b && !state.d && !state.i && !state.u && state.fg === null && state.bg === null;
      if (plain) { appendMarked(target, text, needle); return; }
      const span = document.createElement('span');
      const classes = [];
      if (state.b) classes.push('a-b');
      if (state.d) classes.push('a-d');
      if (state.i) classes.push('a-i');
      if (state.u) classes.push('a-u');
      if (typeof state.fg === 'number') classes.push(`f${state.fg}`); else if (state.fg) span.style.color = state.fg;
      if (typeof state.bg === 'number') classes.push(`b${state.bg}`); else if (state.bg) span.style.backgroundColor = state.bg;
      span.className = classes.join(' ');
      appendMarked(span, text, needle);
      target.append(span);
    };
    ESCAPES.lastIndex = 0;
    for (let m = ESCAPES.exec(message); m; m = ESCAPES.exec(message)) {
      flush(message.slice(at, m.index));
      at = m.index + m[0].length;
      if (m[2] === 'm') sgr(state, m[1]);
    }
    flush(message.slice(at));
  }

  // ---- The log viewer ----------------------------------------------------------------------

  function logViewer() {
    const box = $('#log');
    if (!box) return;
    const change = box.dataset.change;
    const base = `/api/changes/${change}/log_lines`;
    const actions = JSON.parse(box.dataset.actions || '{}');
    let steps = box.dataset.steps ? new Set(box.dataset.steps.split(',').map(Number)) : null;
    const rootStep = steps ? Math.min(...steps) : null;
    const withChildren = steps !== null && new URLSearchParams(location.search).has('children');
    const showTag = steps === null || withChildren;
    const PAGE = 400;
    const MAX_LINES = 3000;
    const stateLine = $('#log-state');
    const followBox = $('#follow');
    const countEl = $('#search-count');
    const input = $('#search-text');

    let atHead = false;
    let atTail = false;
    let loading = false;
    let follow = followBox.checked;
    let ended = box.dataset.running !== 'true';
    let live = null;
    let liveBuffer = null;
    const search = { text: '', ids: [], full: false, index: -1 };
    const data = new Map(); // id -> line, for the lines in the document

    const stepParam = () => (steps ? `&filter%5Bstep_id_in%5D=${[...steps].join(',')}` : '');
    const page = (params, size = PAGE) => api(`${base}?page%5Bsize%5D=${size}${stepParam()}${params}`);
    // The agent stamps each line of a step's output with its time, action and stream
    // (`2026-12-08T00:12:33.123456Z deploy stdout| text`): shown in their own columns.
    const STAMP = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) \S+ (stdout|stderr)\| /;
    // The agent's own records (`2026-12-08T00:12:33.123456Z  INFO phase started ...`) too.
    const RECORD = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) {2}(?=(?:TRACE|DEBUG|INFO|WARN|ERROR) )/;
    const normalize = (line) => {
      const m = STAMP.exec(line.message) || RECORD.exec(line.message);
      if (!m) return { ...line, time: line.created_at };
      return { ...line, time: m[1], stream: m[2] || line.stream, message: line.message.slice(m[0].length) };
    };
    const lineOf = (resource) => normalize({ id: Number(resource.id), ...resource.attributes });
    const firstId = () => Number(box.firstElementChild?.dataset.id ?? 0);
    const lastId = () => Number(box.lastElementChild?.dataset.id ?? 0);

    function show(text) { stateLine.textContent = text; }
    function describe() {
      if (!box.firstElementChild) { show(ended ? 'This log has no lines.' : 'Waiting for lines…'); return; }
      const where = `Lines ${firstId()}–${lastId()}`;
      const how = ended ? 'the change has ended' : follow && atTail ? 'following new lines' : 'following paused (scroll to the bottom or tick Follow to resume)';
      show(`${where} · ${how}`);
    }

    /** The element of a line. */
    function lineElement(line) {
      const div = document.createElement('div');
      div.className = line.stream === 'stderr' ? 'ln stderr' : 'ln';
      div.id = `L${line.id}`;
      div.dataset.id = line.id;
      const no = document.createElement('a');
      no.className = 'no';
      no.href = `#L${line.id}`;
      no.tabIndex = -1;
      no.textContent = line.id;
      const ts = document.createElement('span');
      ts.className = 'ts';
      ts.textContent = (line.time || '').slice(11, 23);
      ts.title = line.time || '';
      div.append(no, ts);
      if (showTag) {
        const tag = document.createElement('span');
        tag.className = 'tag';
        tag.textContent = actions[line.step_id] || `step ${line.step_id}`;
        div.append(tag);
      }
      const msg = document.createElement('span');
      msg.className = 'msg';
      renderAnsi(msg, line.message, search.text.toLowerCase());
      div.append(msg);
      if (search.ids.length && search.ids[search.index] === line.id) div.classList.add('current');
      return div;
    }

    function fragment(lines) {
      const f = document.createDocumentFragment();
      for (const line of lines) { data.set(line.id, line); f.append(lineElement(line)); }
      return f;
    }

    function trimHead() {
      while (box.childElementCount > MAX_LINES) {
        const el = box.firstElementChild;
        const height = el.offsetHeight;
        data.delete(Number(el.dataset.id));
        el.remove();
        box.scrollTop -= height;
        atHead = false;
      }
    }

    function trimTail() {
      while (box.childElementCount > MAX_LINES) {
        const el = box.lastElementChild;
        data.delete(Number(el.dataset.id));
        el.remove();
        atTail = false;
      }
    }

    function replace(lines) {
      data.clear();
      box.replaceChildren(fragment(lines));
    }

    function toBottom() { box.scrollTop = box.scrollHeight; }

    function setFollow(on) {
      if (follow === on) return;
      follow = on;
      followBox.checked = on;
      describe();
    }

    async function loadTail() {
      loading = true;
      try {
        const doc = await page('&sort=-id');
        const lines = doc.data.map(lineOf).reverse();
        replace(lines);
        atTail = true;
        atHead = lines.length < PAGE;
        toBottom();
        return doc.meta.last_id;
      } finally { loading = false; describe(); }
    }

    async function loadHead() {
      loading = true;
      try {
        const doc = await page('');
        const lines = doc.data.map(lineOf);
        replace(lines);
        atHead = true;
        atTail = lines.length < PAGE;
        box.scrollTop = 0;
      } finally { loading = false; describe(); }
    }

    async function loadAround(id) {
      loading = true;
      try {
        const half = PAGE / 2;
        const [before, after] = await Promise.all([page(`&sort=-id&filter%5Bid_lt%5D=${id + 1}`, half), page(`&filter%5Bid_gt%5D=${id}`, half)]);
        replace(before.data.map(lineOf).reverse().concat(after.data.map(lineOf)));
        atHead = before.data.length < half;
        atTail = after.data.length < half;
        return before.meta.last_id;
      } finally { loading = false; describe(); }
    }

    async function loadEarlier() {
      if (loading || atHead || !box.firstElementChild) return;
      loading = true;
      try {
        const doc = await page(`&sort=-id&filter%5Bid_lt%5D=${firstId()}`);
        const lines = doc.data.map(lineOf).reverse();
        atHead = lines.length < PAGE;
        const height = box.scrollHeight;
        box.prepend(fragment(lines));
        box.scrollTop += box.scrollHeight - height;
        trimTail();
      } catch (e) { show(`Cannot load earlier lines: ${e.message}`); } finally { loading = false; }
      describe();
    }

    async function loadLater() {
      if (loading || atTail) return;
      loading = true;
      liveBuffer = [];
      try {
        const doc = await page(`&filter%5Bid_gt%5D=${lastId()}`);
        const lines = doc.data.map(lineOf);
        box.append(fragment(lines));
        if (lines.length < PAGE && liveBuffer !== null) {
          atTail = true;
          const last = lastId();
          box.append(fragment(liveBuffer.filter((l) => l.id > last)));
        }
        trimHead();
      } catch (e) { show(`Cannot load later lines: ${e.message}`); } finally { liveBuffer = null; loading = false; }
      describe();
    }

    /** Scrolls to line `id` (loading the lines around it when it is not in the document), marked
     *  as `kind` (`target`: a link's line; `current`: the search's match). */
    async function goto(id, kind) {
      let el = document.getElementById(`L${id}`);
      if (!el) {
        await loadAround(id);
        el = document.getElementById(`L${id}`);
      }
      for (const old of $$(`.ln.${kind}`, box)) old.classList.remove(kind);
      if (!el) { show(`Line ${id} is not in this log.`); return; }
      el.classList.add(kind);
      setFollow(false);
      el.scrollIntoView({ block: 'center' });
      describe();
    }

    // New lines, through the API's server-sent events.
    let queue = Promise.resolve();
    function accept(line) {
      if (steps && !steps.has(line.step_id)) {
        if (!withChildren) return;
        // A step made after the page was opened may be a descendant: ask for the tree again.
        queue = queue.then(refreshSteps).then(() => { if (steps.has(line.step_id)) append(line); });
        return;
      }
      queue = queue.then(() => append(line));
    }
    function append(line) {
      if (!atTail || loading) { if (liveBuffer && liveBuffer.length < PAGE) liveBuffer.push(line); else if (liveBuffer) liveBuffer = null; return; }
      if (document.getElementById(`L${line.id}`)) return;
      box.append(fragment([line]));
      trimHead();
      if (follow) toBottom();
      describe();
    }
    async function refreshSteps() {
      const doc = await api(`/api/changes/${change}?include=steps`);
      const inside = new Set([rootStep]);
      const all = (doc.included || []).map((s) => ({ id: Number(s.id), parent: s.attributes.parent_id })).sort((a, b) => a.id - b.id);
      for (const s of all) if (s.parent !== null && inside.has(s.parent)) inside.add(s.id);
      steps = inside;
    }
    function followLive(after) {
      if (ended) return;
      live = new EventSource(`${base}/stream?filter%5Bid_gt%5D=${after}`);
      live.onmessage = (event) => accept(normalize({ id: Number(event.lastEventId), ...JSON.parse(event.data) }));
      live.addEventListener('end', async () => {
        live.close();
        ended = true;
        try {
          const doc = await api(`/api/changes/${change}`);
          setStatus($('#log-status'), doc.data.attributes.status);
        } catch (e) { /* the status stays as it was */ }
        describe();
      });
    }

    // The reader's moves.
    box.addEventListener('scroll', () => {
      const fromBottom = box.scrollHeight - box.scrollTop - box.clientHeight;
      if (fromBottom > 40) setFollow(false);
      else if (atTail && !ended) setFollow(true);
      if (box.scrollTop < 400) loadEarlier();
      if (fromBottom < 400) loadLater();
      describe();
    }, { passive: true });
    followBox.addEventListener('change', async () => {
      follow = followBox.checked;
      if (follow) { if (atTail) toBottom(); else await loadTail(); toBottom(); }
      describe();
    });
    $('#to-top').addEventListener('click', async () => { setFollow(false); if (atHead) box.scrollTop = 0; else await loadHead(); });
    $('#to-bottom').addEventListener('click', async () => { if (atTail) toBottom(); else await loadTail(); toBottom(); if (!ended) setFollow(true); });
    const timestamps = $('#timestamps');
    timestamps.checked = localStorage.getItem('opschain.timestamps') === '1';
    box.classList.toggle('show-time', timestamps.checked);
    timestamps.addEventListener('change', () => {
      box.classList.toggle('show-time', timestamps.checked);
      localStorage.setItem('opschain.timestamps', timestamps.checked ? '1' : '0');
    });

    // Search: the server finds the matching lines' ids (the first 1,000, then more as needed);
    // next and previous go from one to the next.
    function rehighlight() {
      const needle = search.text.toLowerCase();
      for (const el of box.children) {
        const msg = el.querySelector('.msg');
        msg.replaceChildren();
        renderAnsi(msg, data.get(Number(el.dataset.id)).message, needle);
      }
    }
    function showCount() {
      if (!search.text) countEl.textContent = '';
      else if (!search.ids.length) countEl.textContent = 'No match';
      else countEl.textContent = `${search.index + 1} of ${search.ids.length}${search.full ? '+' : ''}`;
    }
    async function find(text) {
      search.text = text;
      search.ids = [];
      search.index = -1;
      search.full = false;
      rehighlight();
      if (!text) { showCount(); for (const el of $$('.ln.current', box)) el.classList.remove('current'); return; }
      countEl.textContent = 'Searching…';
      const doc = await page(`&filter%5Bmessage_cont%5D=${encodeURIComponent(text)}`, 1000);
      if (search.text !== text) return;
      search.ids = doc.data.map((l) => Number(l.id));
      search.full = doc.data.length === 1000;
      if (search.ids.length) await move(1); else showCount();
    }
    async function move(delta) {
      if (!search.ids.length) return;
      let next = search.index + delta;
      if (next >= search.ids.length && search.full) {
        const doc = await page(`&filter%5Bmessage_cont%5D=${encodeURIComponent(search.text)}&filter%5Bid_gt%5D=${search.ids[search.ids.length - 1]}`, 1000);
        search.ids.push(...doc.data.map((l) => Number(l.id)));
        search.full = doc.data.length === 1000;
      }
      if (next >= search.ids.length) next = 0;
      if (next < 0) next = search.ids.length - 1;
      search.index = next;
      showCount();
      await goto(search.ids[next], 'current');
    }
    let searching = Promise.resolve();
    $('#search').addEventListener('submit', (event) => {
      event.preventDefault();
      const text = input.value;
      searching = searching.then(() => (text === search.text && search.ids.length ? move(1) : find(text))).catch((e) => { countEl.textContent = `Search failed: ${e.message}`; });
    });
    $('#search-prev').addEventListener('click', () => { searching = searching.then(() => move(-1)).catch(() => {}); });
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && event.shiftKey) { event.preventDefault(); searching = searching.then(() => move(-1)).catch(() => {}); }
    });

    // Links to a line.
    const linked = () => { const m = /^#L(\d+)$/.exec(location.hash); return m ? Number(m[1]) : null; };
    window.addEventListener('hashchange', () => { const id = linked(); if (id !== null) goto(id, 'target'); });

    (async () => {
      try {
        const target = linked();
        let last;
        if (target !== null) {
          setFollow(false);
          last = await loadAround(target);
          await goto(target, 'target');
        } else {
          last = await loadTail();
        }
        followLive(Math.max(last || 0, atTail ? lastId() : 0));
      } catch (e) {
        show(`Cannot load the log: ${e.message}`);
      }
    })();
  }

  document.addEventListener('DOMContentLoaded', () => {
    confirmations();
    changeList();
    changePage();
    logViewer();
    tick();
    setInterval(tick, 1000);
  });
})();
