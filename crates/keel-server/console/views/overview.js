/** A readiness detail as a person reads it. */
function detail(key, value) {
  if (typeof value === 'number' && key.endsWith('bytes')) return K.fmt.bytes(value);
  if (typeof value === 'number' && key.endsWith('ratio')) return K.fmt.pct(value);
  if (typeof value === 'number' && key.endsWith('seconds')) return K.fmt.seconds(value);
  return K.fmt.value(value);
}

// The instance at a glance (superuser): GET /admin/overview, refreshed every 10 s.
K.views.overview = async function (main) {
  const body = K.h('div.overview');
  K.mount(main, K.h('div.page-head', K.h('h1', 'Overview'), K.h('span.muted#overview-updated')), body);
  const draw = async () => {
    const o = await K.get('/admin/overview');
    if (!body.isConnected) return;
    const minutes = o.traffic.minutes.map((m) => ({ ...m, rate: m.requests / 60, error_pct: m.requests ? (100 * m.errors) / m.requests : 0 }));
    const ready = o.readiness;
    const checks = Object.entries(ready.checks || {});
    const q = o.queues || [];
    const depth = (s) => q.reduce((n, x) => n + ((x.depth || {})[s] || 0), 0);
    const mem = o.memory || {};
    K.mount(body,
      K.h('div.stats',
        K.stat('Status', K.badge(ready.status), `${o.backend} · v${o.version} · up ${K.fmt.seconds(o.uptime_seconds)}`, ready.status === 'ok' ? 'good' : 'bad'),
        K.stat('Requests, last hour', K.fmt.num(o.traffic.requests), `${K.fmt.num(o.traffic.requests / 3600)} /s on average`),
        K.stat('Error rate', K.fmt.pct(o.traffic.error_rate || 0), `${K.fmt.num(o.traffic.errors)} answers ≥ 500`, o.traffic.error_rate > 0.01 ? 'bad' : null),
        K.stat('Pool', `${o.pool.in_use} / ${o.pool.max}`, `${o.pool.idle} idle · ${o.pool.waiting} waiting`, o.pool.waiting > 0 ? 'warn' : null),
        K.stat('Cache hit ratio', K.fmt.pct(o.cache.hit_ratio), `${K.fmt.num(o.cache.hits)} hits · ${K.fmt.num(o.cache.misses)} misses`),
        K.stat('Memory', K.fmt.bytes(mem.resident_bytes), mem.limit_bytes ? `of ${K.fmt.bytes(mem.limit_bytes)}` : 'resident'),
        K.stat('Disk', o.disk ? K.fmt.pct(o.disk.used_ratio) : '–', o.disk ? `${K.fmt.bytes(o.disk.available_bytes)} free` : 'not measurable', o.disk && o.disk.used_ratio > 0.9 ? 'bad' : null),
        K.stat('Jobs waiting', K.fmt.num(depth('available')), `${K.fmt.num(depth('running'))} running · ${K.fmt.num(depth('dead'))} dead`, depth('dead') ? 'warn' : null)),
      K.h('div.charts',
        K.chart({ title: 'Requests per second', points: minutes, series: [{ key: 'rate', label: 'req/s', cls: 's1' }] }),
        K.chart({ title: 'Latency', points: minutes, format: K.fmt.ms, series: [
          { key: 'p50_ms', label: 'p50', cls: 's1' }, { key: 'p95_ms', label: 'p95', cls: 's2' }, { key: 'p99_ms', label: 'p99', cls: 's3' }] }),
        K.chart({ title: 'Errors (% of answers ≥ 500)', points: minutes, format: (v) => `${K.fmt.num(v)}%`, series: [{ key: 'error_pct', label: 'errors', cls: 's3' }] })),
      K.h('div.cols.wide-first',
        K.section('Readiness checks', K.table([
          ['Check', ([name]) => name],
          ['Status', ([, c]) => K.badge(c.status)],
          ['Required', ([, c]) => (c.required ? 'yes' : 'no')],
          ['Latency', ([, c]) => K.fmt.ms(c.latency_ms), { class: 'num' }],
          ['Details', ([, c]) => K.h('span.details', Object.entries(c).filter(([k, v]) => !['status', 'required', 'latency_ms'].includes(k) && v !== null && v !== '')
            .map(([k, v]) => K.h('span', `${k.replace(/_/g, ' ')}: ${detail(k, v)}`)))],
        ], checks)),
        K.section('Firing alerts', K.table([
          ['Rule', (a) => a.name], ['Severity', (a) => K.badge(a.severity)],
          ['Value', (a) => `${K.fmt.num(a.value)} ${a.unit || ''} > ${K.fmt.num(a.threshold)}`],
          ['Since', (a) => K.fmt.ago(a.since)], ['Detail', (a) => a.detail || ''],
        ], o.alerts_firing || [], { empty: 'No alert is firing.' })),
        K.section('Queues', K.table([
          ['Queue', (x) => K.h('a', { href: `#/jobs/q/${encodeURIComponent(x.name)}` }, x.name)],
          ['Waiting', (x) => K.fmt.num((x.depth || {}).available || 0), { class: 'num' }],
          ['Running', (x) => K.fmt.num((x.depth || {}).running || 0), { class: 'num' }],
          ['Dead', (x) => K.fmt.num((x.depth || {}).dead || 0), { class: 'num' }],
          ['Lag', (x) => K.fmt.seconds(x.oldest_available_seconds), { class: 'num' }],
          ['', (x) => (x.paused ? K.badge('paused') : '')],
        ], q, { empty: 'No queues.' }), K.h('p.muted', o.leader ? 'This instance is the leader (runs cron and cleanup).' : 'Another instance is the leader.'))));
    const updated = document.getElementById('overview-updated');
    if (updated) updated.textContent = `updated ${new Date().toISOString().slice(11, 19)}Z · refreshes every 10 s`;
  };
  await draw();
  K.every(10000, () => draw().catch(() => {}));
};
