// Jobs (superuser): queues with their depth and throughput, pause and resume, a queue's
// jobs by state, one job's attempts and errors, retry/cancel/discard, bulk retry of dead
// jobs, cron schedules and leaders, worker keys.
const STATES = ['available', 'scheduled', 'running', 'retryable', 'completed', 'dead', 'cancelled'];

K.views.queues = async function (main) {
  const [queues, schedules, keys] = await Promise.all([K.get('/admin/queues'), K.get('/admin/schedules'), K.get('/admin/worker_keys')]);
  const finished = {};
  const before = (K.lastQueues && K.lastQueues.at) || null;
  // Throughput: completed jobs between two loads of this screen.
  const now = Date.now();
  for (const q of queues.items) {
    const done = (q.depth || {}).completed || 0;
    if (before && K.lastQueues.done[q.name] !== undefined) finished[q.name] = Math.max(0, done - K.lastQueues.done[q.name]) / ((now - before) / 1000);
  }
  K.lastQueues = { at: now, done: Object.fromEntries(queues.items.map((q) => [q.name, (q.depth || {}).completed || 0])) };
  const d = (q, s) => K.fmt.num((q.depth || {})[s] || 0);
  K.mount(main,
    K.h('div.page-head', K.h('h1', 'Jobs'), K.h('span.muted', queues.leader ? 'this instance leads' : 'another instance leads')),
    K.section('Queues', K.table([
      ['Queue', (q) => K.h('a', { href: `#/jobs/q/${encodeURIComponent(q.name)}` }, q.name)],
      ['Waiting', (q) => d(q, 'available'), { class: 'num' }], ['Scheduled', (q) => d(q, 'scheduled'), { class: 'num' }],
      ['Running', (q) => d(q, 'running'), { class: 'num' }], ['Retrying', (q) => d(q, 'retryable'), { class: 'num' }],
      ['Dead', (q) => d(q, 'dead'), { class: 'num' }], ['Completed', (q) => d(q, 'completed'), { class: 'num' }],
      ['Throughput', (q) => (finished[q.name] === undefined ? '–' : `${K.fmt.num(finished[q.name])}/s`), { class: 'num' }],
      ['Lag', (q) => K.fmt.seconds(q.oldest_available_seconds), { class: 'num' }],
      ['Limits', (q) => [q.concurrency ? `${q.concurrency} at once` : null, q.rate ? `rate ${JSON.stringify(q.rate)}` : null].filter(Boolean).join(' · ')],
      ['', (q) => [q.paused ? K.badge('paused') : null, queueButtons(q)]],
    ], queues.items, { rowClass: (q) => (q.paused ? 'paused' : '') })),
    K.section('Schedules', K.table([
      ['Kind', (s) => s.kind], ['Queue', (s) => s.queue], ['Schedule', (s) => K.h('code', s.schedule)],
      ['Last tick', (s) => (s.last_tick ? `${K.fmt.time(s.last_tick)} (${K.fmt.ago(s.last_tick)})` : 'never')],
      ['Next tick', (s) => (s.next_tick ? `${K.fmt.time(s.next_tick)} (${K.fmt.ago(s.next_tick)})` : '–')],
      ['Catch-up', (s) => (s.catch_up ? 'yes' : 'no')],
    ], schedules.items, { empty: 'No cron schedules.' }),
    K.h('h3', 'Leaders'),
    K.table([['Role', (l) => l.name], ['Instance', (l) => K.h('code', l.owner)], ['Lease ends', (l) => K.fmt.ago(l.expires_at)]], schedules.leaders, { empty: 'No leader yet.' })),
    workerKeys(keys));
  K.every(5000, () => { if (!document.querySelector('dialog')) K.refresh(); });
};

function queueButtons(q) {
  const base = `/admin/queues/${encodeURIComponent(q.name)}`;
  return [
    q.paused
      ? K.button('Resume', async (b) => { await K.act(b, () => K.api('POST', `${base}/resume`), `${q.name} resumed`); K.refresh(); }, '.small')
      : K.button('Pause', async (b) => { await K.act(b, () => K.api('POST', `${base}/pause`), `${q.name} paused`); K.refresh(); }, '.small'),
    (q.depth || {}).dead ? K.button('Retry dead', async (b) => {
      if (!(await K.confirm('Retry dead jobs', `Run the ${q.depth.dead} dead jobs of ${q.name} again?`, 'Retry all'))) return;
      const r = await K.act(b, () => K.api('POST', `${base}/retry_dead`));
      if (r) K.toast(`${r.data.retried} jobs retried`);
      K.refresh();
    }, '.small') : null,
  ];
}

function workerKeys(keys) {
  const name = K.h('input', { name: 'name', required: true });
  const queues = K.h('input', { name: 'queues', required: true, placeholder: 'queue, other_queue' });
  return K.section('Worker keys', K.table([
    ['Name', (k) => k.name], ['Queues', (k) => (k.queues || []).join(', ')], ['Created', (k) => K.fmt.time(k.created_at)],
    ['', (k) => K.button('Revoke', async (b) => {
      if (await K.confirm('Revoke worker key', `Revoke ${k.name}? Its workers stop at their next call.`, 'Revoke')) {
        await K.act(b, () => K.api('DELETE', `/admin/worker_keys/${k.id}`), 'Key revoked');
        K.refresh();
      }
    }, '.danger.small')],
  ], keys.items || [], { empty: 'No worker keys.' }),
  K.h('form.inline', { onsubmit: async (e) => {
    e.preventDefault();
    const r = await K.act(e.submitter, () => K.api('POST', '/admin/worker_keys', { body: { name: name.value.trim(), queues: queues.value.split(',').map((s) => s.trim()).filter(Boolean) } }));
    if (r) { await K.dialog('Worker key created', [K.h('p', 'Copy the token now: it is shown once.'), K.h('pre.token', r.data.token)], [['Done', true]]); K.refresh(); }
  } }, K.h('label', 'Name', name), K.h('label', 'Queues', queues), K.h('button.primary', { type: 'submit' }, 'Create')));
}

K.views.queue = async function (main, { queue, state = 'dead', before, query }) {
  const list = await K.get('/admin/jobs', { queue, state, before, limit: 50 });
  const go = (s) => K.link(`/jobs/q/${encodeURIComponent(queue)}`, { state: s });
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.h('a.muted', { href: '#/jobs' }, 'Jobs'), ' / ', queue)),
    K.tabs(STATES.map((s) => [s, s]), state, go),
    K.table([
      ['Id', (j) => K.h('a', { href: `#/jobs/j/${j.id}` }, String(j.id)), { class: 'num' }],
      ['Kind', (j) => j.kind], ['State', (j) => K.badge(j.state)], ['Attempt', (j) => `${j.attempt} / ${j.max_attempts}`],
      ['Created', (j) => K.fmt.time(j.created_at)], ['Run at', (j) => K.fmt.time(j.run_at)],
      ['Last error', (j) => lastError(j)],
      ['', (j) => jobButtons(j)],
    ], list.items, { onRow: (j) => (location.hash = `#/jobs/j/${j.id}`), empty: `No ${state} jobs in ${queue}.` }),
    list.next ? K.h('div.pager', K.h('a.button', { href: K.link(`/jobs/q/${encodeURIComponent(queue)}`, { state, before: list.next }) }, 'Older »')) : null);
};

function lastError(j) {
  const errors = Array.isArray(j.errors) ? j.errors : [];
  const last = errors[errors.length - 1];
  if (!last) return '';
  const text = typeof last === 'string' ? last : last.error || last.message || JSON.stringify(last);
  return K.h('span.error-text', text.length > 80 ? text.slice(0, 77) + '…' : text);
}

function jobButtons(j, after = () => K.refresh()) {
  const act = (label, method, path, done, cls = '.small') => K.button(label, async (b) => {
    const r = await K.act(b, () => K.api(method, path), done);
    if (r) after(r);
  }, cls);
  const finished = ['completed', 'dead', 'cancelled'].includes(j.state);
  return [
    ['dead', 'cancelled', 'retryable', 'scheduled'].includes(j.state) ? act('Retry', 'POST', `/admin/jobs/${j.id}/retry`, `Job ${j.id} queued again`) : null,
    finished ? null : act('Cancel', 'POST', `/admin/jobs/${j.id}/cancel`, `Job ${j.id} cancelled`, '.small.danger'),
    finished ? act('Discard', 'DELETE', `/admin/jobs/${j.id}`, `Job ${j.id} discarded`, '.small.danger') : null,
  ];
}

K.views.job = async function (main, { id }) {
  const j = await K.get(`/jobs/${id}`);
  const ran = j.started_at && j.finished_at ? new Date(j.finished_at) - new Date(j.started_at) : null;
  K.mount(main,
    K.h('div.page-head', K.h('h1', K.h('a.muted', { href: '#/jobs' }, 'Jobs'), ' / ', K.h('a.muted', { href: `#/jobs/q/${encodeURIComponent(j.queue)}` }, j.queue), ` / ${j.id}`),
      K.h('div.actions', jobButtons(j, (r) => (r.status === 204 ? (location.hash = `#/jobs/q/${encodeURIComponent(j.queue)}`) : K.refresh())))),
    K.h('div.stats',
      K.stat('State', K.badge(j.state)), K.stat('Kind', j.kind), K.stat('Attempt', `${j.attempt} / ${j.max_attempts}`),
      K.stat('Priority', j.priority), K.stat('Ran for', K.fmt.ms(ran)), K.stat('Org', j.org_id ? K.h('code', j.org_id.slice(-12)) : '–')),
    K.section('Timings', K.table([['', ([k]) => k], ['', ([, v]) => `${K.fmt.time(v)}${v ? ` (${K.fmt.ago(v)})` : ''}`]],
      [['created', j.created_at], ['run at', j.run_at], ['started', j.started_at], ['finished', j.finished_at], ['lease ends', j.lease_expires_at]])),
    K.section('Attempts and errors', K.table([
      ['Attempt', (e) => e.attempt ?? '', { class: 'num' }], ['At', (e) => K.fmt.time(e.at)],
      ['Error', (e) => K.h('span.error-text', typeof e === 'string' ? e : e.error || e.message || JSON.stringify(e))],
    ], Array.isArray(j.errors) ? j.errors : [], { empty: 'No errors.' })),
    j.progress ? K.section('Progress', K.pre(j.progress)) : null,
    K.section('Payload', K.pre(j.payload)),
    j.result !== null && j.result !== undefined ? K.section('Result', K.pre(j.result)) : null);
  // Live: the job's stream sends it whenever its state or progress changes.
  if (!['completed', 'dead', 'cancelled'].includes(j.state)) {
    const shown = JSON.stringify([j.state, j.attempt, j.progress]);
    K.listen(`/jobs/${j.id}/events`, {
      job: (next) => { if (JSON.stringify([next.state, next.attempt, next.progress]) !== shown) K.refresh(); },
    });
  }
};
