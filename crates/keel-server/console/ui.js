// DOM helpers, formatting and small widgets. Nothing here writes HTML from strings: every
// value reaches the page as a text node or an attribute, so data cannot inject markup.
const K = (window.K = { views: {} });

/** h('tag.class#id', {attr: value, onclick: fn}, child, …): an element. */
K.h = function (spec, attrs, ...children) {
  const [, tag = 'div', rest = ''] = /^([a-z0-9]*)(.*)$/i.exec(spec);
  const el = document.createElement(tag || 'div');
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === '.') el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className += (el.className ? ' ' : '') + value;
    else if (key === 'value') el.value = value;
    else if (key === 'checked' || key === 'selected' || key === 'disabled') el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  K.append(el, children);
  return el;
};

K.append = function (el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
};

/** Replaces an element's children. */
K.mount = function (el, ...children) {
  el.replaceChildren();
  return K.append(el, children);
};

K.fmt = {
  num(n) {
    if (n === null || n === undefined) return '–';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: 2 });
  },
  bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
  },
  ms(n) {
    if (n === null || n === undefined) return '–';
    if (n === 0) return '0';
    if (n < 1) return `${(n * 1000).toFixed(0)} µs`;
    if (n < 1000) return `${n.toFixed(n < 10 ? 1 : 0)} ms`;
    return `${(n / 1000).toFixed(1)} s`;
  },
  pct(x) {
    return x === null || x === undefined ? '–' : `${(x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1)} %`;
  },
  seconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  },
  time(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().replace('T', ' ').slice(0, 19) + 'Z';
  },
  ago(iso) {
    if (!iso) return '–';
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    return s >= 0 ? `${K.fmt.seconds(s)} ago` : `in ${K.fmt.seconds(-s)}`;
  },
  value(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  },
};

/** A short message in the corner; errors stay until clicked. */
K.toast = function (message, kind = 'ok') {
  let box = document.getElementById('toasts');
  if (!box) document.body.append((box = K.h('div#toasts', { role: 'status', 'aria-live': 'polite' })));
  const item = K.h(`div.toast.${kind}`, { onclick: () => item.remove() }, message);
  box.append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 4000);
};

/** A modal dialog; resolves with the value of the button pressed (or null). */
K.dialog = function (title, body, buttons = [['Cancel', null], ['OK', true]]) {
  return new Promise((resolve) => {
    const dialog = K.h('dialog.modal', { 'aria-label': title });
    const close = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); close(null); });
    K.append(dialog, [
      K.h('h2', title),
      K.h('div.modal-body', body),
      K.h('div.buttons', buttons.map(([label, value], i) =>
        K.h(`button${i === buttons.length - 1 ? '.primary' : ''}`, { type: 'button', onclick: () => close(value) }, label))),
    ]);
    document.body.append(dialog);
    dialog.showModal();
  });
};

K.confirm = (title, text, action = 'Confirm') => K.dialog(title, K.h('p', text), [['Cancel', false], [action, true]]).then(Boolean);

/** A table: columns are [label, row => cell, {class}]; onRow makes rows clickable. */
K.table = function (columns, rows, { onRow, empty = 'Nothing here yet.', rowClass } = {}) {
  if (!rows.length) return K.h('p.empty', empty);
  return K.h('div.table-wrap', K.h('table',
    K.h('thead', K.h('tr', columns.map(([label, , opts]) => K.h('th', { class: opts && opts.class }, label)))),
    K.h('tbody', rows.map((row) => K.h('tr', {
      class: [onRow ? 'link' : '', rowClass ? rowClass(row) : ''].join(' ').trim() || null,
      onclick: onRow ? (e) => { if (!e.target.closest('a,button,input,select')) onRow(row); } : null,
      tabindex: onRow ? 0 : null,
      onkeydown: onRow ? (e) => { if (e.key === 'Enter') onRow(row); } : null,
    }, columns.map(([, cell, opts]) => K.h('td', { class: opts && opts.class }, cell(row))))))));
};

/** A labelled stat. */
K.stat = (label, value, note, kind) => K.h(`div.stat${kind ? '.' + kind : ''}`, K.h('span.label', label), K.h('span.value', value), note ? K.h('span.note', note) : null);

K.badge = (text, kind) => K.h(`span.badge.${kind || String(text).toLowerCase().replace(/[^a-z]/g, '')}`, text);

K.section = (title, ...body) => K.h('section.card', K.h('h2', title), ...body);

/** Tabs over a set of [name, label, render] panes; the chosen one is in the URL. */
K.tabs = function (panes, current, go) {
  return K.h('nav.tabs', { role: 'tablist' }, panes.map(([name, label]) =>
    K.h('a', { href: go(name), role: 'tab', 'aria-selected': String(name === current), class: name === current ? 'active' : null }, label)));
};

/** Builds a hash link with a query. */
K.link = function (path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return `#${path}${s ? '?' + s : ''}`;
};

/** Shows an error from the API (or any) in a box. */
K.errorBox = function (error) {
  const code = error && error.code ? K.h('code', error.code) : null;
  return K.h('div.error-box', { role: 'alert' }, code, ' ', (error && error.message) || String(error));
};

/** Runs an async action from a button, disabling it meanwhile and reporting failures. */
K.act = async function (button, run, done) {
  if (button) button.disabled = true;
  try {
    const result = await run();
    if (done) K.toast(done);
    return result;
  } catch (error) {
    K.toast(error.code ? `${error.code}: ${error.message}` : String(error), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
};

K.button = (label, onclick, cls = '') => {
  const b = K.h(`button${cls}`, { type: 'button' }, label);
  b.addEventListener('click', () => onclick(b));
  return b;
};

K.pre = (value) => K.h('pre.json', JSON.stringify(value, null, 2));
