// Orgs, their members, and each collection's records: filter, sort, search and cursor
// paging in the API's own language, imports with live progress, exports, aggregates.
K.views.orgs = async function (main, { after, query }) {
  const page = await K.get('/orgs', { after, limit: 50 });
  const globals = K.schema.collections.filter((c) => c.global);
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.superuser() ? 'Orgs' : 'My orgs'),
      K.superuser() ? K.button('New org', () => newOrg(), '.primary') : null),
    K.table([
      ['Org', (x) => K.h('a', { href: `#/orgs/${encodeURIComponent(x.org.slug)}` }, x.org.name || x.org.slug)],
      ['Slug', (x) => K.h('code', x.org.slug)],
      ['Your role', (x) => x.role || (K.superuser() ? 'superuser' : '–')],
      ['Second factor', (x) => (x.org.require_mfa ? 'required' : 'optional')],
      ['Created', (x) => K.fmt.time(x.org.created_at)],
    ], page.items, { onRow: (x) => (location.hash = `#/orgs/${encodeURIComponent(x.org.slug)}`), empty: 'You are not a member of any org.' }),
    pager(query, page.next, after),
    K.superuser() && globals.length ? K.section('Global collections', K.h('ul.links', globals.map((c) => K.h('li', K.h('a', { href: `#/global/c/${c.name}` }, c.name))))) : null);
};

async function newOrg() {
  const slug = K.h('input', { name: 'slug', required: true, pattern: '[a-z0-9-]+' });
  const name = K.h('input', { name: 'name', required: true });
  const ok = await K.dialog('New org', [K.h('label', 'Slug', slug), K.h('label', 'Name', name)], [['Cancel', false], ['Create', true]]);
  if (!ok) return;
  await K.act(null, () => K.api('POST', '/orgs', { body: { slug: slug.value.trim(), name: name.value.trim() } }), 'Org created');
  K.refresh();
}

/** "Next page" and "first page" links for cursor paging. */
function pager(query, next, after) {
  const here = location.hash.split('?')[0].slice(1);
  return K.h('div.pager',
    after ? K.h('a.button', { href: K.link(here, { ...query, after: null }) }, '« First page') : null,
    next ? K.h('a.button', { href: K.link(here, { ...query, after: next }), rel: 'next' }, 'Next page »') : null);
}
K.pager = pager;

K.views.org = async function (main, { org, tab = 'data', query }) {
  const { org: info, role } = await K.get(`/orgs/${encodeURIComponent(org)}`);
  const manages = K.superuser() || K.schema.roles.indexOf(role) <= 1;
  const go = (t) => K.link(`/orgs/${encodeURIComponent(org)}`, { tab: t });
  const body = K.h('div');
  K.mount(main,
    K.h('div.page-head', K.h('h1', info.name || info.slug), K.h('span.muted', K.h('code', info.slug), role ? ` · your role: ${role}` : '')),
    K.tabs([['data', 'Data'], ['members', 'Members'], ['invitations', 'Invitations'], ['keys', 'API keys'], ['audit', 'Audit log'], ['settings', 'Settings']], tab, go),
    body);
  if (tab === 'data') return orgData(body, org);
  if (!manages) return K.mount(body, K.h('p.empty', 'Your role does not manage this org.'));
  if (tab === 'members') return members(body, org, query);
  if (tab === 'invitations') return invitations(body, org);
  if (tab === 'keys') return apiKeys(body, org);
  if (tab === 'audit') return K.audit(body, `/orgs/${encodeURIComponent(org)}/audit`);
  if (tab === 'settings') return orgSettings(body, org, info);
};

function orgData(body, org) {
  const tenant = K.schema.collections.filter((c) => !c.global);
  K.mount(body, K.h('div.tiles', tenant.map((c) => K.h('a.tile', { href: `#/orgs/${encodeURIComponent(org)}/c/${c.name}` },
    K.h('strong', c.name), K.h('span.muted', `${c.fields.length} fields${c.read_only ? ' · read-only' : ''}${c.timeseries ? ' · time series' : ''}`)))));
}

async function members(body, org, query) {
  const base = `/orgs/${encodeURIComponent(org)}/members`;
  const page = await K.get(base, { after: query.after, limit: 50 });
  const roles = K.schema.roles;
  const roleSelect = (current, onchange) => K.h('select', { onchange, 'aria-label': 'role' }, roles.map((r) => K.h('option', { value: r, selected: r === current }, r)));
  const email = K.h('input', { type: 'email', name: 'email', placeholder: 'someone@example.com', required: true });
  const role = roleSelect(roles[roles.length - 1]);
  K.mount(body,
    K.table([
      ['Email', (m) => m.user.email], ['Name', (m) => m.user.name || ''],
      ['Role', (m) => roleSelect(m.role, (e) => K.act(e.target, () => K.api('PATCH', `${base}/${m.user.id}`, { body: { role: e.target.value } }), `${m.user.email} is now ${e.target.value}`))],
      ['Joined', (m) => K.fmt.time(m.joined_at)],
      ['', (m) => K.button('Remove', async (b) => {
        if (await K.confirm('Remove member', `Remove ${m.user.email} from ${org}?`, 'Remove')) {
          await K.act(b, () => K.api('DELETE', `${base}/${m.user.id}`), 'Member removed');
          K.refresh();
        }
      }, '.danger.small')],
    ], page.items),
    K.pager({ ...query, after: null }, page.next, query.after),
    K.section('Invite someone', K.h('form.inline', { onsubmit: async (e) => {
      e.preventDefault();
      const done = await K.act(e.submitter, () => K.api('POST', `/orgs/${encodeURIComponent(org)}/invitations`, { body: { email: email.value.trim(), role: role.value } }), `Invitation sent to ${email.value.trim()}`);
      if (done) email.value = '';
    } }, K.h('label', 'Email', email), K.h('label', 'Role', role), K.h('button.primary', { type: 'submit' }, 'Invite')),
    K.h('p.muted', 'The invitation email has a link to join; it expires, and works once.')));
}

async function invitations(body, org) {
  const base = `/orgs/${encodeURIComponent(org)}/invitations`;
  const list = await K.get(base);
  K.mount(body, K.table([
    ['Email', (i) => i.email], ['Role', (i) => i.role], ['Sent', (i) => K.fmt.time(i.created_at)],
    ['State', (i) => K.badge(i.accepted_at ? 'accepted' : i.revoked_at ? 'revoked' : new Date(i.expires_at) < new Date() ? 'expired' : 'pending')],
    ['', (i) => (i.accepted_at || i.revoked_at ? '' : [
      K.button('Resend', (b) => K.act(b, () => K.api('POST', `${base}/${i.id}/resend`), 'Invitation sent again'), '.small'),
      K.button('Revoke', async (b) => { await K.act(b, () => K.api('DELETE', `${base}/${i.id}`), 'Invitation revoked'); K.refresh(); }, '.danger.small')])],
  ], list.items, { empty: 'No invitations.' }));
}

async function apiKeys(body, org) {
  const base = `/orgs/${encodeURIComponent(org)}/api_keys`;
  const list = await K.get(base);
  const name = K.h('input', { name: 'name', required: true, maxlength: 100 });
  const role = K.h('select', { 'aria-label': 'role' }, K.schema.roles.map((r) => K.h('option', { value: r }, r)));
  K.mount(body,
    K.table([
      ['Name', (k) => k.name], ['Role', (k) => k.role], ['Prefix', (k) => K.h('code', k.prefix || '')],
      ['Created', (k) => K.fmt.time(k.created_at)], ['Last used', (k) => K.fmt.ago(k.last_used_at)],
      ['', (k) => K.button('Revoke', async (b) => {
        if (await K.confirm('Revoke key', `Revoke ${k.name}? Clients using it stop working at once.`, 'Revoke')) {
          await K.act(b, () => K.api('DELETE', `${base}/${k.id}`), 'Key revoked');
          K.refresh();
        }
      }, '.danger.small')],
    ], list.items, { empty: 'No API keys.' }),
    K.section('New key', K.h('form.inline', { onsubmit: async (e) => {
      e.preventDefault();
      const made = await K.act(e.submitter, () => K.api('POST', base, { body: { name: name.value.trim(), role: role.value } }));
      if (made) {
        await K.dialog('Key created', [K.h('p', 'Copy the token now: it is shown once.'), K.h('pre.token', made.data.token)], [['Done', true]]);
        K.refresh();
      }
    } }, K.h('label', 'Name', name), K.h('label', 'Role', role), K.h('button.primary', { type: 'submit' }, 'Create'))));
}

function orgSettings(body, org, info) {
  const box = K.h('input', { type: 'checkbox', checked: info.require_mfa });
  K.mount(body, K.section('Security', K.h('label.check', box, 'Members must use a second factor to reach this org'),
    K.button('Save', (b) => K.act(b, () => K.api('PATCH', `/orgs/${encodeURIComponent(org)}`, { body: { require_mfa: box.checked } }), 'Saved'), '.primary')));
}

/** The list screen of one collection. */
K.views.collection = async function (main, params) {
  const { org, collection, query } = params;
  const spec = K.collection(collection);
  if (!spec) return K.views.missing(main);
  const base = `${K.base(org)}/${collection}`;
  const here = org ? `/orgs/${encodeURIComponent(org)}/c/${collection}` : `/global/c/${collection}`;
  const filter = K.h('input.filter', { name: 'filter', value: query.filter || '', placeholder: 'filter, e.g. status = "todo" && due_date < "2027-01-01"', spellcheck: 'false' });
  const sort = K.h('input', { name: 'sort', value: query.sort || '', placeholder: 'sort, e.g. -created_at', spellcheck: 'false' });
  const q = spec.searchable ? K.h('input', { name: 'q', type: 'search', value: query.q || '', placeholder: 'search' }) : null;
  const form = K.h('form.query', { onsubmit: (e) => {
    e.preventDefault();
    location.hash = K.link(here, { filter: filter.value.trim(), sort: sort.value.trim(), q: q && q.value.trim() });
  } }, filter, sort, q, K.h('button.primary', { type: 'submit' }, 'Apply'));
  const results = K.h('div.results');
  const live = K.h('p.live', { hidden: true });
  const exportLink = (format) => `/api/v1${base}/export?${new URLSearchParams(Object.entries({ format, filter: query.filter, sort: query.sort, q: query.q }).filter(([, v]) => v))}`;
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.h('a.muted', { href: org ? `#/orgs/${encodeURIComponent(org)}` : '#/orgs' }, org || 'global'), ' / ', collection),
      K.h('div.actions',
        spec.read_only ? null : K.h('a.button.primary', { href: `#${here}/new` }, 'New record'),
        K.h('a.button', { href: exportLink('csv'), download: `${collection}.csv` }, 'Export CSV'),
        K.h('a.button', { href: exportLink('ndjson'), download: `${collection}.ndjson` }, 'Export NDJSON'))),
    K.tabs([['records', 'Records'], ...(spec.read_only ? [] : [['import', 'Import']]), ['aggregate', 'Aggregates']], query.view || 'records',
      (v) => K.link(here, { ...query, after: null, view: v === 'records' ? null : v })),
    query.view === 'import' && !spec.read_only ? K.importer(base, collection)
      : query.view === 'aggregate' ? K.aggregates(base, spec, query.filter)
        : [form, live, results]);
  if (query.view === 'import' || query.view === 'aggregate') return;
  // Live: changes to records this list could show, from the collection's stream.
  let changes = 0;
  const changed = () => {
    changes += 1;
    K.mount(live, `${changes} change${changes === 1 ? '' : 's'} since this page loaded · `, K.button('Reload', () => K.refresh(), '.link'));
    live.hidden = false;
  };
  K.listen(`${base}/events${query.filter ? `?filter=${encodeURIComponent(query.filter)}` : ''}`, {
    created: changed, updated: changed, deleted: changed, bulk: changed, reset: changed,
  });
  // Long text and JSON stay in the record's view; the table shows the short fields.
  const columns = spec.fields.filter((f) => f.type !== 'json' && !(f.type === 'text' && f.max > 1000)).slice(0, 7);
  try {
    const expand = columns.filter((f) => f.type === 'relation').map((f) => f.name).slice(0, 8).join(',');
    const page = await K.get(base, { filter: query.filter, sort: query.sort, q: query.q, after: query.after, limit: 50, count: 'estimate', expand });
    const sortLink = (name) => {
      const current = query.sort || '';
      const next = current === name ? `-${name}` : name;
      return K.h('a', { href: K.link(here, { ...query, sort: next, after: null }), title: `sort by ${name}` }, name, current === name ? ' ▲' : current === `-${name}` ? ' ▼' : '');
    };
    K.mount(results,
      K.h('p.muted', page.count_capped ? `more than ${K.fmt.num(page.count)} records` : `${K.fmt.num(page.count)} records`, query.filter ? ' match the filter' : ''),
      K.table([
        [sortLink('id'), (r) => K.h('a', { href: `#${here}/${r.id}` }, K.h('code', r.id.slice(-12)))],
        ...columns.map((f) => [sortLink(f.name), (r) => cell(r[f.name], f, r.expand && r.expand[f.name]), { class: f.type === 'integer' || f.type === 'number' ? 'num' : null }]),
        [sortLink('updated_at' in (page.items[0] || {}) ? 'updated_at' : 'created_at'), (r) => K.fmt.time(r.updated_at || r.created_at)],
      ], page.items, { onRow: (r) => (location.hash = `${here}/${r.id}`), empty: query.filter || query.q ? 'No record matches.' : 'No records yet.' }),
      K.pager({ ...query, after: null }, page.next, query.after));
  } catch (error) {
    K.mount(results, K.errorBox(error));
    if (error.code && error.details && error.details.field) filter.classList.add('invalid');
  }
};

/** A record's value in a table cell. */
function cell(value, field, expanded) {
  if (value === null || value === undefined) return K.h('span.null', '–');
  if (field.type === 'relation') return K.label(field.to, expanded) || K.h('code.small', String(value).slice(-12));
  if (field.type === 'bool') return value ? '✓' : '✗';
  if (field.type === 'file') {
    const files = Array.isArray(value) ? value : [value];
    return `${files.length} file${files.length === 1 ? '' : 's'}`;
  }
  const text = K.fmt.value(value);
  return text.length > 60 ? text.slice(0, 57) + '…' : text;
}
K.cell = cell;

/** A related record's name: a user's email, else the target's first unique or required text field. */
K.label = function (to, record) {
  if (!record) return null;
  if (to === 'users') return record.email || null;
  const target = K.collection(to);
  const text = target && (target.fields.find((f) => f.type === 'text' && f.unique) || target.fields.find((f) => f.type === 'text' && f.required));
  return text && record[text.name] ? String(record[text.name]) : null;
};

/** Upload a CSV or NDJSON file: small files answer a report, large ones a job to follow. */
K.importer = function (base, collection) {
  const file = K.h('input', { type: 'file', name: 'file', accept: '.csv,.ndjson,.jsonl,text/csv,application/x-ndjson', required: true });
  const mode = K.h('select', { name: 'mode', 'aria-label': 'mode' }, K.h('option', { value: 'atomic' }, 'all rows or none'), K.h('option', { value: 'skip' }, 'skip invalid rows'));
  const background = K.h('input', { type: 'checkbox', name: 'background', checked: true });
  const out = K.h('div.import-out');
  const form = K.h('form.inline', { onsubmit: async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return;
    const ndjson = /\.(nd)?jsonl?$/i.test(f.name) || f.type.includes('ndjson');
    const button = e.submitter;
    button.disabled = true;
    K.mount(out, K.h('p', `Uploading ${f.name} (${K.fmt.bytes(f.size)})…`));
    try {
      const r = await K.api('POST', `${base}/import`, {
        body: f, headers: { 'Content-Type': ndjson ? 'application/x-ndjson' : 'text/csv' },
        query: { mode: mode.value, background: background.checked ? 'true' : 'false' },
      });
      if (r.status === 202) await follow(out, r.data.job.id, base);
      else K.mount(out, report(r.data, base));
    } catch (error) {
      K.mount(out, K.errorBox(error), error.details && error.details.errors ? report(error.details, base) : null);
    } finally {
      button.disabled = false;
    }
  } }, K.h('label', 'File', file), K.h('label', 'Mode', mode), K.h('label.check', background, 'in the background'), K.h('button.primary', { type: 'submit' }, 'Import'));
  return K.section(`Import into ${collection}`, form, out);
};

/** Follows an import job, showing its progress until it ends. */
async function follow(out, id, base) {
  const bar = K.meter(0, 'import progress');
  const fill = bar.querySelector('.fill');
  const line = K.h('span.muted', 'queued');
  const show = (fraction) => {
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    bar.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  };
  K.mount(out, K.h('div.progress', bar, line), K.h('p', K.h('a', { href: `#/jobs/j/${id}` }, `job ${id}`)));
  const job = await K.waitJob(id, (j) => {
    const p = j.progress || {};
    if (p.read === undefined) return (line.textContent = j.state);
    line.textContent = `${K.fmt.num(p.read)} rows read · ${K.fmt.num(p.written)} written · ${K.fmt.num(p.rejected)} rejected`;
    show(p.bytes ? p.bytes_read / p.bytes : 0);
  });
  if (job.state === 'completed') {
    show(1);
    K.mount(out, K.h('div.progress', bar, K.h('span', 'done')), report(job.result, base));
  } else {
    const last = (job.errors || []).slice(-1)[0] || {};
    K.mount(out, K.errorBox({ code: last.code || job.state, message: last.message || last.error || `the import is ${job.state}` }));
  }
}

/** An import's report: counts, the row errors, and deleting the batch. */
function report(r, base) {
  if (!r) return null;
  return K.h('div.report',
    K.h('div.stats',
      K.stat('Read', K.fmt.num(r.read)), K.stat('Written', K.fmt.num(r.written), null, 'good'),
      K.stat('Rejected', K.fmt.num(r.rejected), null, r.rejected ? 'bad' : null),
      K.stat('Committed', r.committed ? 'yes' : 'no')),
    r.errors && r.errors.length ? K.table([
      ['Row', (x) => x.row, { class: 'num' }], ['Line', (x) => x.line, { class: 'num' }], ['Column', (x) => x.column || ''],
      ['Code', (x) => K.h('code', x.code)], ['Message', (x) => x.message]], r.errors) : null,
    r.errors_truncated ? K.h('p.muted', 'Only the first errors are listed.') : null,
    r.batch && r.written && base ? K.button('Delete this batch', async (b) => {
      if (await K.confirm('Delete batch', `Delete the ${r.written} records of batch ${r.batch}?`, 'Delete')) {
        const done = await K.act(b, () => K.api('DELETE', `${base}/batches/${r.batch}`));
        if (done) K.toast(`${done.data.deleted} records deleted`);
      }
    }, '.danger') : null);
}
K.report = report;

/** Group-by counts and measures over the current filter. */
K.aggregates = function (base, spec, filter) {
  const groupable = spec.fields.filter((f) => !['json', 'file'].includes(f.type));
  const numeric = spec.fields.filter((f) => ['integer', 'number'].includes(f.type));
  const group = K.h('select', { 'aria-label': 'group by' }, K.h('option', { value: '' }, '(all records)'), groupable.map((f) => K.h('option', { value: f.name }, f.name)));
  const measure = K.h('select', { 'aria-label': 'measure' }, K.h('option', { value: '' }, 'count only'),
    numeric.flatMap((f) => ['sum', 'avg', 'min', 'max'].map((fn) => K.h('option', { value: `${fn}:${f.name}` }, `${fn} of ${f.name}`))));
  const out = K.h('div');
  const form = K.h('form.inline', { onsubmit: async (e) => {
    e.preventDefault();
    try {
      const r = await K.get(`${base}/aggregate`, { group: group.value, measures: measure.value, filter });
      const keys = Object.keys(r.groups[0] || {});
      K.mount(out, K.table(keys.map((k) => [k, (g) => K.fmt.value(g[k]), { class: typeof (r.groups[0] || {})[k] === 'number' ? 'num' : null }]), r.groups),
        r.truncated ? K.h('p.muted', 'More groups exist than are shown.') : null);
    } catch (error) { K.mount(out, K.errorBox(error)); }
  } }, K.h('label', 'Group by', group), K.h('label', 'Measure', measure), K.h('button', { type: 'submit' }, 'Aggregate'));
  return K.section(filter ? `Aggregates of the records matching ${filter}` : 'Aggregates', form, out);
};
