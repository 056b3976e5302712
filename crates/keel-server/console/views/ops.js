// Operations (superuser): backups, alerts, error groups, file-link signing keys, the
// migration history and pending plan, the effective configuration (secrets redacted).
K.views.ops = async function (main, { tab = 'backups' }) {
  const go = (t) => K.link('/ops', { tab: t });
  const body = K.h('div');
  K.mount(main, K.h('div.page-head', K.h('h1', 'Operations')),
    K.tabs([['backups', 'Backups'], ['alerts', 'Alerts'], ['errors', 'Errors'], ['keys', 'Signing keys'], ['migrations', 'Migrations'], ['config', 'Configuration'], ['audit', 'Audit log']], tab, go),
    body);
  const view = { backups, alerts, errors, keys, migrations, config, audit: (b) => K.audit(b, '/admin/audit') }[tab];
  if (view) await view(body);
};

async function backups(body) {
  const list = await K.get('/admin/backups');
  const status = K.h('div.job-status');
  const runJob = async (button, path, label) => {
    const r = await K.act(button, () => K.api('POST', path));
    if (!r) return;
    const id = r.data.job.id;
    K.mount(status, K.h('p', `${label}: `, K.h('a', { href: `#/jobs/j/${id}` }, `job ${id}`), ' ', K.h('span.muted', 'queued')));
    const job = await K.waitJob(id, (j) => { status.querySelector('.muted').textContent = j.state; });
    if (job.state === 'completed') {
      K.toast(`${label}: done`);
      K.mount(status, K.h('div.ok-box', `${label}: done. `, summary(job.result)));
    } else {
      const last = (job.errors || []).slice(-1)[0] || {};
      K.mount(status, K.errorBox({ code: job.state, message: last.error || last.message || `${label} ${job.state}` }));
    }
    if (path.endsWith('/backups')) refreshList();
  };
  const table = K.h('div');
  const stats = K.h('div');
  const refreshList = async () => {
    const fresh = await K.get('/admin/backups');
    K.mount(table, listTable(fresh));
    K.mount(stats, statCards(fresh));
  };
  const statCards = (l) => K.h('div.stats',
    K.stat('Backups', K.fmt.num(l.items.length), l.items.length ? `${K.fmt.bytes(l.items.reduce((n, b) => n + b.size, 0))} in all` : null),
    K.stat('Latest', l.items[0] ? K.fmt.ago(l.items[0].created_at) : 'never', l.items[0] ? K.fmt.bytes(l.items[0].size) : null),
    K.stat('Last run', l.runs[0] ? K.badge(l.runs[0].state) : '–', l.runs[0] ? K.fmt.ago(l.runs[0].started_at) : null, l.runs[0] && l.runs[0].state === 'failed' ? 'bad' : null),
    K.stat('Schedule', l.schedule ? K.h('code', l.schedule) : 'none', l.target),
    K.stat('Encrypted', l.encrypted ? 'yes (age)' : 'no key', null, l.encrypted ? 'good' : 'bad'));
  const listTable = (l) => K.table([
    ['Name', (b) => K.h('code', b.name)], ['Taken', (b) => `${K.fmt.time(b.created_at)} (${K.fmt.ago(b.created_at)})`],
    ['Size', (b) => K.fmt.bytes(b.size), { class: 'num' }],
    ['', (b) => K.button('Verify', (btn) => runJob(btn, `/admin/backups/${encodeURIComponent(b.name)}/verify`, `Verify ${b.name}`), '.small')],
  ], l.items, { empty: 'No backups yet.' });
  K.mount(table, listTable(list));
  K.mount(stats, statCards(list));
  K.mount(body, stats,
    K.h('div.actions', K.button('Take a backup now', (b) => runJob(b, '/admin/backups', 'Backup'), '.primary')),
    status, table,
    K.h('p.muted', 'A backup is a job on the keel_bulk queue; verifying restores it into a scratch database and checks every table and file against its manifest. Restores are done with `keel backup restore` (OPERATIONS.md).'));
}

function summary(result) {
  if (!result) return '';
  if (result.manifest) return `${K.fmt.num(result.files)} files checked, ${result.missing_files.length} missing, in ${result.seconds.toFixed(1)} s.`;
  if (result.name) return `${result.name}: ${K.fmt.bytes(result.bytes)}, ${K.fmt.num(result.rows)} rows, ${K.fmt.num(result.files)} files, in ${result.seconds.toFixed(1)} s.`;
  return JSON.stringify(result);
}

async function alerts(body) {
  const list = await K.get('/admin/alerts');
  K.mount(body, K.table([
    ['Rule', (a) => a.name], ['State', (a) => K.badge(a.state)], ['Severity', (a) => a.severity],
    ['Value', (a) => `${K.fmt.num(a.value)} ${a.unit || ''}`, { class: 'num' }], ['Threshold', (a) => `> ${K.fmt.num(a.threshold)} for ${K.fmt.seconds(a.for_seconds)}`],
    ['Since', (a) => (a.since ? K.fmt.ago(a.since) : '–')], ['Detail', (a) => a.detail || ''], ['Enabled', (a) => (a.enabled ? 'yes' : 'no')],
  ], list.items, { rowClass: (a) => a.state }),
  K.h('p.muted', 'Rules and thresholds come from the spec\'s [alerts]; notifications go to the configured webhook or email (OPERATIONS.md).'));
}

async function errors(body) {
  const list = await K.get('/admin/errors', { limit: 100 });
  K.mount(body, K.table([
    ['Last seen', (e) => K.fmt.ago(e.last_seen)], ['Kind', (e) => K.badge(e.kind)], ['Route', (e) => K.h('code', e.route)],
    ['Message', (e) => K.h('span.error-text', e.message)], ['Count', (e) => K.fmt.num(e.count), { class: 'num' }],
    ['First seen', (e) => K.fmt.time(e.first_seen)], ['Sample request', (e) => K.h('code.small', e.sample_request_id)],
  ], list.items, { empty: 'No unexpected errors. Each 500 and panic is grouped here by where it happened.' }));
}

async function keys(body) {
  const list = await K.get('/admin/keys');
  K.mount(body,
    K.table([
      ['Key', (k) => K.h('code', k.id)], ['Purpose', (k) => k.purpose], ['Created', (k) => K.fmt.time(k.created_at)],
      ['State', (k) => K.badge(k.state.replace(/_/g, ' '), k.state)],
      ['', (k) => (k.state === 'verifies' ? K.button('Retire', async (b) => {
        if (!(await K.confirm('Retire key', `Links signed with ${k.id} stop working at once.`, 'Retire'))) return;
        await K.act(b, () => K.api('POST', `/admin/keys/${encodeURIComponent(k.id)}/retire`), 'Key retired');
        K.refresh();
      }, '.small.danger') : '')],
    ], list.items, { empty: 'No keys yet (the first file link makes one).' }),
    K.h('div.actions', K.button('Rotate', async (b) => {
      if (!(await K.confirm('Rotate signing key', 'Add a key that signs new file links from now on? Older keys keep verifying until you retire them (after an hour, when the links they signed have expired).', 'Rotate'))) return;
      await K.act(b, () => K.api('POST', '/admin/keys/rotate'), 'New key added');
      K.refresh();
    }, '.primary')));
}

async function migrations(body) {
  const m = await K.get('/admin/migrations');
  K.mount(body,
    K.section('Pending plan', m.pending.length
      ? [K.h('p', `${m.pending.length} step(s) would bring the database from version ${m.version} to the spec; ${m.destructive} destructive. Apply with keel migrate apply.`), K.h('pre.sql', m.sql)]
      : K.h('p', `The database is up to date (version ${m.version}).`)),
    K.section('History', K.table([
      ['Version', (h) => h.version, { class: 'num' }], ['Applied', (h) => K.fmt.time(h.applied_at)], ['Description', (h) => h.description],
    ], m.history, { empty: 'No migrations recorded.' })));
}

async function config(body) {
  const c = await K.get('/admin/config');
  K.mount(body, K.h('p.muted', 'The configuration in effect (defaults, file, environment and flags merged); secrets are shown as ***.'),
    Object.entries(c.config).map(([section, values]) => K.section(`[${section}]`, K.table([
      ['Key', ([k]) => K.h('code', k)], ['Value', ([, v]) => K.h('code', K.fmt.value(v))],
    ], Object.entries(values), { empty: '(all defaults)' }))));
}

/** The audit log of operators' writes (all of them, or an org's), newest first. */
K.audit = async function (body, path) {
  const query = Object.fromEntries(new URLSearchParams(location.hash.split('?')[1] || ''));
  const page = await K.get(path, { before: query.before, limit: 50 });
  const here = location.hash.split('?')[0].slice(1);
  K.mount(body,
    K.table([
      ['When', (e) => K.fmt.time(e.created_at)],
      ['Who', (e) => e.actor_email || (e.api_key ? `API key ${e.api_key.slice(-8)}` : '–')],
      ['Request', (e) => [K.h(`span.method.${e.method.toLowerCase()}`, e.method), ' ', K.h('code', e.path)]],
      ['Answer', (e) => K.badge(String(e.status), e.status < 400 ? 'completed' : 'dead')],
      ['From', (e) => e.ip || '–'],
      ['Request id', (e) => K.h('code.small', e.request_id)],
    ], page.items, { empty: 'No operator writes yet.' }),
    page.next ? K.h('div.pager', K.h('a.button', { href: K.link(here, { ...query, before: page.next }) }, 'Older »')) : null,
    K.h('p.muted', 'Every write to the admin API and every change to members, API keys, invitations and org settings, from the console or any client; record changes are in each org\'s activity log. Kept a year.'));
};
