// The API explorer: every route of this app's OpenAPI document with its parameters and
// schemas, and "try it" with the signed-in session.
K.views.explorer = async function (main, { path: chosen, method: chosenMethod, q = '' }) {
  const doc = K.openapi || (K.openapi = await K.get('/api/v1/openapi.json'));
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ['get', 'post', 'put', 'patch', 'delete']) if (item[method]) ops.push({ path, method, op: item[method], item });
  }
  const search = K.h('input', { type: 'search', value: q, placeholder: 'filter routes', 'aria-label': 'filter routes' });
  const list = K.h('ul.routes');
  const detail = K.h('div.route-detail');
  const draw = () => {
    const term = search.value.toLowerCase();
    K.mount(list, ops.filter((o) => !term || `${o.method} ${o.path} ${o.op.summary || ''}`.toLowerCase().includes(term)).map((o) =>
      K.h('li', { class: o.path === chosen && o.method === chosenMethod ? 'active' : null },
        K.h('a', { href: K.link('/api', { path: o.path, method: o.method, q: search.value }) }, K.h(`span.method.${o.method}`, o.method.toUpperCase()), ' ', o.path))));
  };
  search.addEventListener('input', draw);
  draw();
  K.mount(main, K.h('div.page-head', K.h('h1', 'API'), K.h('span.muted', `${doc.info.title} ${doc.info.version} · ${ops.length} operations · `, K.h('a', { href: '/api/v1/openapi.json', target: '_blank' }, 'openapi.json'))),
    K.h('div.explorer', K.h('div.route-list', search, list), detail));
  const o = ops.find((x) => x.path === chosen && x.method === chosenMethod);
  if (o) K.mount(detail, operation(doc, o));
  else K.mount(detail, K.h('p.empty', 'Choose a route to see its parameters and schemas, and to try it.'));
};

/** Resolves a local $ref. */
function deref(doc, schema) {
  let s = schema;
  for (let i = 0; s && s.$ref && i < 10; i++) s = s.$ref.replace(/^#\//, '').split('/').reduce((x, k) => x && x[k], doc);
  return s;
}

function operation(doc, { path, method, op, item }) {
  const params = [...(item.parameters || []), ...(op.parameters || [])].map((p) => deref(doc, p));
  const inputs = {};
  const rows = params.map((p) => {
    const el = K.h('input', { name: p.name, placeholder: p.schema ? (p.schema.type || '') : '', spellcheck: 'false', required: p.required });
    inputs[`${p.in}:${p.name}`] = el;
    return K.h('tr', K.h('td', K.h('code', p.name), p.required ? ' *' : ''), K.h('td', p.in), K.h('td', el), K.h('td.muted', p.description || ''));
  });
  const bodySchema = op.requestBody && op.requestBody.content && op.requestBody.content['application/json'] && deref(doc, op.requestBody.content['application/json'].schema);
  const body = bodySchema ? K.h('textarea.code', { rows: 8, spellcheck: 'false', 'aria-label': 'request body' }, JSON.stringify(example(doc, bodySchema), null, 2)) : null;
  const out = K.h('div.try-out');
  const send = K.button('Send', async (b) => {
    let url = path;
    const query = {};
    for (const p of params) {
      const v = inputs[`${p.in}:${p.name}`].value;
      if (p.in === 'path') url = url.replace(`{${p.name}}`, encodeURIComponent(v));
      else if (p.in === 'query' && v !== '') query[p.name] = v;
    }
    let payload;
    if (body && body.value.trim()) {
      try { payload = JSON.parse(body.value); } catch { return K.mount(out, K.errorBox({ code: 'invalid_json', message: 'the body is not JSON' })); }
    }
    b.disabled = true;
    const started = performance.now();
    try {
      const response = await K.api(method.toUpperCase(), url, { body: payload, query, raw: true });
      const text = await response.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
      K.mount(out, K.h('p', K.badge(String(response.status), response.ok ? 'completed' : 'dead'), ` ${response.statusText} · ${(performance.now() - started).toFixed(0)} ms`),
        K.h('pre.json', shown.length > 200000 ? shown.slice(0, 200000) + '\n…' : shown));
    } finally { b.disabled = false; }
  }, '.primary');
  const responses = Object.entries(op.responses || {}).map(([status, r]) => {
    const resolved = deref(doc, r);
    const schema = resolved.content && resolved.content['application/json'] && deref(doc, resolved.content['application/json'].schema);
    return K.h('details', K.h('summary', K.h('code', status), ' ', resolved.description || ''), schema ? K.pre(schemaView(doc, schema)) : null);
  });
  return K.h('div',
    K.h('h2', K.h(`span.method.${method}`, method.toUpperCase()), ' ', K.h('code', path)),
    op.summary ? K.h('p', op.summary) : null, op.description ? K.h('p.muted', op.description) : null,
    rows.length ? K.h('table.params', K.h('thead', K.h('tr', K.h('th', 'Parameter'), K.h('th', 'In'), K.h('th', 'Value'), K.h('th', ''))), K.h('tbody', rows)) : null,
    body ? [K.h('h3', 'Body'), body, K.h('details', K.h('summary', 'Body schema'), K.pre(schemaView(doc, bodySchema)))] : null,
    K.h('div.actions', send, K.h('span.muted', method === 'get' ? 'Runs with your session.' : 'Runs with your session: this changes data.')),
    out, K.h('h3', 'Responses'), responses);
}

/** A schema with its references resolved one level deep, for reading. */
function schemaView(doc, schema, depth = 0) {
  if (!schema || depth > 4) return schema;
  const s = deref(doc, schema);
  if (typeof s !== 'object' || s === null) return s;
  if (Array.isArray(s)) return s.map((x) => schemaView(doc, x, depth + 1));
  return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, typeof v === 'object' ? schemaView(doc, v, depth + 1) : v]));
}

/** An example value of a schema, for the body editor. */
function example(doc, schema, depth = 0) {
  const s = deref(doc, schema) || {};
  if (depth > 3) return null;
  if (s.example !== undefined) return s.example;
  if (s.enum) return s.enum[0];
  if (s.oneOf || s.anyOf) return example(doc, (s.oneOf || s.anyOf)[0], depth + 1);
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== 'null') : s.type;
  if (type === 'object' || s.properties) {
    const out = {};
    for (const [k, v] of Object.entries(s.properties || {})) if ((s.required || []).includes(k)) out[k] = example(doc, v, depth + 1);
    return out;
  }
  if (type === 'array') return [];
  if (type === 'integer' || type === 'number') return s.minimum ?? 0;
  if (type === 'boolean') return false;
  if (type === 'string') return s.format === 'date' ? '2026-12-07' : s.format === 'date-time' ? '2026-12-07T12:00:00Z' : '';
  return null;
}
