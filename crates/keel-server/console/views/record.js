// One record: its fields as a form (edit with If-Match; a 412 is shown as a conflict),
// relations, files, activity history and JSON; and the create form.
function paths(org, collection) {
  const here = org ? `/orgs/${encodeURIComponent(org)}/c/${collection}` : `/global/c/${collection}`;
  return { here, api: `${K.base(org)}/${collection}` };
}

/** An input for a field's value; `read()` gives the JSON value to send. */
function input(field, value) {
  const id = `f-${field.name}`;
  let el;
  let read;
  switch (field.type) {
    case 'bool':
      el = K.h('input', { type: 'checkbox', id, checked: Boolean(value) });
      read = () => el.checked;
      break;
    case 'select':
      el = K.h('select', { id }, field.required ? null : K.h('option', { value: '' }, '–'),
        field.values.map((v) => K.h('option', { value: v, selected: v === value }, v)));
      read = () => (el.value === '' ? null : el.value);
      break;
    case 'integer':
    case 'number':
      el = K.h('input', { type: 'number', id, value: value ?? '', step: field.type === 'integer' ? 1 : 'any', min: field.min, max: field.max });
      read = () => (el.value === '' ? null : Number(el.value));
      break;
    case 'date':
      el = K.h('input', { type: 'date', id, value: value ?? '' });
      read = () => el.value || null;
      break;
    case 'datetime':
      el = K.h('input', { id, value: value ?? '', placeholder: '2026-12-07T10:00:00Z', spellcheck: 'false' });
      read = () => el.value.trim() || null;
      break;
    case 'json':
      el = K.h('textarea.code', { id, rows: 4, spellcheck: 'false' }, value === null || value === undefined ? '' : JSON.stringify(value, null, 2));
      read = () => {
        if (!el.value.trim()) return null;
        try { return JSON.parse(el.value); } catch { throw Object.assign(new Error('not valid JSON'), { field: field.name }); }
      };
      break;
    case 'file':
      return null;
    default:
      el = field.max > 200
        ? K.h('textarea', { id, rows: 3, maxlength: field.max }, value ?? '')
        : K.h('input', { id, value: value ?? '', maxlength: field.max, spellcheck: 'false' });
      read = () => (el.value === '' && !field.required ? null : el.value);
  }
  return { el, read, id };
}

/** The form of a record's fields; errors from the API land at their fields. */
function recordForm(spec, record, { onSubmit, label }) {
  const inputs = [];
  const general = K.h('div');
  const rows = spec.fields.map((field) => {
    const made = input(field, record ? record[field.name] : field.default === '@now' ? null : field.default);
    if (!made) return null;
    const message = K.h('span.field-error', { id: `${made.id}-error`, 'aria-live': 'polite' });
    made.el.setAttribute('aria-describedby', `${made.id}-error`);
    inputs.push({ field, ...made, message });
    const note = [field.type, field.type === 'relation' ? `→ ${field.to}` : null, field.required ? 'required' : null, field.unique ? 'unique' : null].filter(Boolean).join(' · ');
    return K.h('div.field', { 'data-field': field.name },
      K.h('label', { for: made.id }, field.name, K.h('small', note)), made.el,
      field.type === 'relation' && record && record.expand && record.expand[field.name]
        ? K.h('span.help', '→ ', K.label(field.to, record.expand[field.name]) || record[field.name]) : null,
      field.description ? K.h('span.help', field.description) : null, message);
  });
  const submit = K.h('button.primary', { type: 'submit' }, label);
  const form = K.h('form.record', { novalidate: true }, rows, general, K.h('div.buttons', submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    K.mount(general);
    for (const x of inputs) { x.message.textContent = ''; x.el.classList.remove('invalid'); }
    const body = {};
    try {
      for (const x of inputs) {
        const value = x.read();
        const before = record ? record[x.field.name] : undefined;
        if (record && JSON.stringify(value) === JSON.stringify(before ?? null)) continue;
        if (!record && value === null) continue;
        body[x.field.name] = value;
      }
    } catch (error) {
      const x = inputs.find((i) => i.field.name === error.field);
      if (x) { x.message.textContent = error.message; x.el.classList.add('invalid'); }
      return;
    }
    submit.disabled = true;
    try {
      await onSubmit(body);
    } catch (error) {
      if (error.code === 'validation_failed' && Array.isArray(error.details)) {
        for (const d of error.details) {
          const x = inputs.find((i) => i.field.name === d.field);
          if (x) { x.message.textContent = `${d.message} (${d.code})`; x.el.classList.add('invalid'); }
          else K.append(general, [K.errorBox(d)]);
        }
        const first = form.querySelector('.invalid');
        if (first) first.focus();
      } else if (error.code === 'unique_violation') {
        for (const name of (error.details && error.details.fields) || []) {
          const x = inputs.find((i) => i.field.name === name);
          if (x) { x.message.textContent = 'another record has this value (unique)'; x.el.classList.add('invalid'); }
        }
        K.mount(general, K.errorBox(error));
      } else {
        K.mount(general, error.conflict || K.errorBox(error));
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

K.views.create = async function (main, { org, collection }) {
  const spec = K.collection(collection);
  if (!spec || spec.read_only) return K.views.missing(main);
  const { here, api } = paths(org, collection);
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.h('a.muted', { href: `#${here}` }, collection), ' / new')),
    recordForm(spec, null, { label: 'Create', onSubmit: async (body) => {
      const { data } = await K.api('POST', api, { body });
      K.toast('Record created');
      location.hash = `${here}/${data.id}`;
    } }));
};

K.views.record = async function (main, { org, collection, id, tab = 'fields' }) {
  const spec = K.collection(collection);
  if (!spec) return K.views.missing(main);
  const { here, api } = paths(org, collection);
  const relations = spec.fields.filter((f) => f.type === 'relation').map((f) => f.name).slice(0, 8);
  const response = await K.api('GET', `${api}/${id}`, { query: { expand: relations.join(',') } });
  const record = response.data;
  const etag = response.headers.get('etag');
  const go = (t) => K.link(`${here}/${id}`, { tab: t });
  const body = K.h('div');
  const tabs = [['fields', 'Fields'], ['relations', 'Relations'], ['files', 'Files'], ['json', 'JSON']];
  if (org && !spec.read_only) tabs.push(['history', 'History']);
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.h('a.muted', { href: `#${here}` }, collection), ' / ', K.h('code', id)),
      K.h('div.actions', K.h('span.muted', `version ${record.version ?? '–'} · created ${K.fmt.time(record.created_at)}`),
        spec.read_only ? null : K.button('Delete', async (b) => {
          if (!(await K.confirm('Delete record', `Delete this ${collection} record? This cannot be undone.`, 'Delete'))) return;
          const done = await K.act(b, () => K.api('DELETE', `${api}/${id}`, { headers: etag ? { 'If-Match': etag } : {} }), 'Record deleted');
          if (done) location.hash = here;
        }, '.danger'))),
    K.tabs(tabs, tab, go), body);
  if (tab === 'fields') {
    if (spec.read_only) return K.mount(body, K.pre(record));
    K.mount(body, recordForm(spec, record, { label: 'Save', onSubmit: async (changes) => {
      if (!Object.keys(changes).length) return K.toast('Nothing changed');
      try {
        await K.api('PATCH', `${api}/${id}`, { body: changes, headers: etag ? { 'If-Match': etag } : {} });
      } catch (error) {
        if (error.code === 'version_mismatch') {
          error.conflict = K.h('div.conflict', { role: 'alert' },
            K.h('strong', 'Someone else changed this record'),
            K.h('p', `You edited version ${record.version}; it is now at version ${(error.details || {}).current_version}. Nothing was saved.`),
            K.button('Reload the current version', () => K.refresh(), '.primary'));
        }
        throw error;
      }
      K.toast('Saved');
      K.refresh();
    } }));
  } else if (tab === 'relations') {
    const expanded = record.expand || {};
    K.mount(body, relations.length ? K.table([
      ['Field', (name) => name],
      ['Points at', (name) => {
        const f = spec.fields.find((x) => x.name === name);
        const value = record[name];
        if (!value) return K.h('span.null', '–');
        if (f.to === 'users') return (expanded[name] && expanded[name].email) || value;
        const target = K.collection(f.to);
        const href = target && target.global ? `#/global/c/${f.to}/${value}` : `#/orgs/${encodeURIComponent(org)}/c/${f.to}/${value}`;
        return K.h('a', { href }, `${f.to} ${value.slice(-12)}`);
      }],
      ['Record', (name) => (expanded[name] ? K.h('code.small', JSON.stringify(expanded[name]).slice(0, 160)) : '')],
    ], relations) : K.h('p.empty', 'This collection has no relations.'));
    const incoming = K.schema.collections.flatMap((c) => c.fields.filter((f) => f.type === 'relation' && f.to === collection).map((f) => [c, f]));
    if (incoming.length && org) {
      K.append(body, [K.section('Pointing here', K.h('ul.links', incoming.map(([c, f]) =>
        K.h('li', K.h('a', { href: K.link(`/orgs/${encodeURIComponent(org)}/c/${c.name}`, { filter: `${f.name} = "${id}"` }) }, `${c.name} by ${f.name}`)))))]);
    }
  } else if (tab === 'files') {
    const fileFields = spec.fields.filter((f) => f.type === 'file');
    K.mount(body, fileFields.length ? fileFields.map((f) => {
      const files = record[f.name] ? (Array.isArray(record[f.name]) ? record[f.name] : [record[f.name]]) : [];
      return K.section(f.name, K.table([
        ['Name', (x) => K.h('a', { href: `/api/v1${api}/${id}/files/${f.name}/${x.id}`, download: x.name }, x.name)],
        ['Type', (x) => x.type], ['Size', (x) => K.fmt.bytes(x.size), { class: 'num' }], ['Uploaded', (x) => K.fmt.time(x.uploaded_at)],
        ['SHA-256', (x) => K.h('code.small', (x.sha256 || '').slice(0, 16))],
      ], files, { empty: 'No files.' }));
    }) : K.h('p.empty', 'This collection has no file fields.'));
  } else if (tab === 'json') {
    K.mount(body, K.pre(record));
  } else if (tab === 'history') {
    const page = await K.get(`/orgs/${encodeURIComponent(org)}/activity`, { filter: `record = "${id}"`, sort: '-id', limit: 50, expand: 'actor' });
    K.mount(body, K.table([
      ['When', (a) => K.fmt.time(a.created_at)], ['Action', (a) => K.badge(a.action)],
      ['Who', (a) => (a.expand && a.expand.actor ? a.expand.actor.email : a.api_key ? `key ${a.api_key.slice(-8)}` : '–')],
      ['Changes', (a) => K.h('code.small', JSON.stringify(a.changes.changed || a.changes.after || a.changes.before || a.changes).slice(0, 200))],
      ['Request', (a) => K.h('code.small', a.request_id)],
    ], page.items, { empty: 'No history (or your role cannot read the activity log).' }));
  }
};
