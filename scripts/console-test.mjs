// scripts/console-test.mjs — the console in a real browser: Debian's Chromium, headless,
// driven by playwright-core (npm, installed by scripts/test-tools.sh; it never downloads a
// browser). The Rust test `console::*` serves a seeded app and runs this script with a JSON
// description of what it made (KEEL_CONSOLE_TEST); the script signs in, browses, filters,
// edits, meets a conflict, imports, retries a dead job, pauses a queue, takes and verifies a
// backup, and checks that an org manager (who signs in with a TOTP second factor) sees only
// their org. Each step saves a screenshot
// under `screens`; the run fails on any console error, page error or failed request that the
// step did not expect.
//
//   node scripts/console-test.mjs            (the test's mode)
//   node scripts/console-test.mjs --bench N  (first paint of the overview and a 50-row page, N loads each,
//                                            and a first visit's bytes and paint, against `peer_url` if set)

import { join } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { createHmac } from 'node:crypto';

const setup = JSON.parse(process.env.KEEL_CONSOLE_TEST);
const { chromium } = await import(pathToFileURL(join(setup.modules, 'node_modules/playwright-core/index.mjs')).href);
const bench = process.argv.includes('--bench') ? Number(process.argv[process.argv.indexOf('--bench') + 1] || 20) : 0;
mkdirSync(setup.screens, { recursive: true });

const browser = await chromium.launch({
  executablePath: setup.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
const problems = [];
let expected = [];
const log = (line) => process.stdout.write(`${line}\n`);

/** A page that records what goes wrong in it. */
async function open(name) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const allowed = (text) => expected.some((e) => text.includes(e));
  page.on('console', (m) => { if (m.type() === 'error' && !allowed(m.text())) problems.push(`${name}: console error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // A download the test does not wait for is aborted on purpose.
    if (!(r.failure() || {}).errorText?.includes('ERR_ABORTED')) problems.push(`${name}: request failed: ${r.url()} ${(r.failure() || {}).errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !allowed(`${r.status()}`)) problems.push(`${name}: ${r.status()} from ${r.request().method()} ${r.url()}`);
  });
  return { context, page };
}

async function step(name, page, run, allow = []) {
  expected = allow;
  const started = Date.now();
  try {
    await run();
  } catch (error) {
    problems.push(`${name}: ${error.message.split('\n')[0]}`);
    await page.screenshot({ path: join(setup.screens, `failed-${name}.png`), fullPage: true }).catch(() => {});
    log(`FAIL ${name} (${Date.now() - started} ms): ${error.message.split('\n')[0]}`);
    expected = [];
    return false;
  }
  await page.screenshot({ path: join(setup.screens, `${name}.png`), fullPage: false });
  log(`ok   ${name} (${Date.now() - started} ms)`);
  expected = [];
  return true;
}

async function signIn(page, who) {
  await page.goto(`${setup.url}/_/`);
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password').fill(who.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  if (who.totp_secret) await secondFactor(page, who);
  await page.locator('header.top').waitFor();
}

/** An authenticator app's code (RFC 6238: HMAC-SHA1 over the 30-second step, 6 digits). */
function totp(secret, step) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', key).update(counter).digest();
  const at = mac[mac.length - 1] & 0x0f;
  return String((mac.readUInt32BE(at) & 0x7fffffff) % 1e6).padStart(6, '0');
}

/** The second-factor screen: a wrong code is refused at the form, the right one signs in. */
async function secondFactor(page, who) {
  await page.getByRole('heading', { name: 'Second factor' }).waitFor();
  expected = [...expected, '401'];
  await page.getByLabel('Code').fill('000000');
  await page.getByRole('button', { name: 'Verify' }).click();
  await page.locator('.error-box', { hasText: 'invalid_code' }).waitFor();
  await page.screenshot({ path: join(setup.screens, 'second-factor.png') });
  // A code works once: the one that confirmed the enrolment is spent, so wait for the next step.
  while (Math.floor(Date.now() / 1000 / 30) <= who.totp_used_step) await page.waitForTimeout(500);
  await page.getByLabel('Code').fill(totp(who.totp_secret, Math.floor(Date.now() / 1000 / 30)));
  await page.getByRole('button', { name: 'Verify' }).click();
}

/** Writes through the API as the superuser (another user of the same record). */
async function api(method, path, body) {
  const response = await fetch(`${setup.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${setup.token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (bench) {
  // First paint of two screens, as the browser measures it, with the session cookie set and
  // the assets cached (a returning operator), N loads each.
  const { page } = await open('bench');
  await signIn(page, setup.superuser);
  const results = {};
  for (const [name, hash, ready] of [
    ['overview', '#/', '.charts svg'],
    ['collection_50_rows', `#/orgs/${setup.org}/c/${setup.collection}`, 'tbody tr:nth-child(50)'],
  ]) {
    const paints = [];
    const readies = [];
    for (let i = 0; i < bench; i++) {
      await page.goto('about:blank');
      const started = Date.now();
      await page.goto(`${setup.url}/_/${hash}`);
      await page.locator(ready).first().waitFor();
      readies.push(Date.now() - started);
      paints.push(await page.evaluate(() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null));
    }
    results[name] = { loads: bench, first_contentful_paint_ms_p50: median(paints), ready_ms_p50: median(readies) };
  }
  // A first visit to the sign-in page: a fresh context (nothing cached), brotli or gzip as
  // Chromium asks, until the password field is there. With `peer_url` (another backend's
  // console, e.g. PocketBase's /_/), the two are loaded alternately, A B A B.
  const targets = [['keel', `${setup.url}/_/`]];
  if (setup.peer_url) targets.push(['peer', setup.peer_url]);
  const cold = Object.fromEntries(targets.map(([name]) => [name, { bytes: [], paint: [], ready: [] }]));
  for (let i = 0; i < bench; i++) {
    for (const [name, url] of targets) {
      const fresh = await browser.newContext();
      const p2 = await fresh.newPage();
      let bytes = 0;
      const cdp = await fresh.newCDPSession(p2);
      await cdp.send('Network.enable');
      cdp.on('Network.loadingFinished', (e) => { bytes += e.encodedDataLength; });
      const started = Date.now();
      await p2.goto(url);
      await p2.locator('input[type=password]').waitFor();
      cold[name].ready.push(Date.now() - started);
      cold[name].paint.push(await p2.evaluate(() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null));
      await new Promise((r) => setTimeout(r, 500));
      cold[name].bytes.push(bytes);
      await fresh.close();
    }
  }
  for (const [name] of targets) {
    results[`first_visit_${name}`] = {
      loads: bench,
      bytes_p50: median(cold[name].bytes),
      first_contentful_paint_ms_p50: median(cold[name].paint),
      ready_ms_p50: median(cold[name].ready),
    };
  }
  log(JSON.stringify(results, null, 2));
  await browser.close();
  process.exit(0);
}

// ---- the superuser
{
  const { page } = await open('superuser');
  await step('sign-in', page, async () => {
    await page.goto(`${setup.url}/_/`);
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    await page.getByLabel('Email').fill(setup.superuser.email);
    await page.getByLabel('Password').fill('not the password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.error-box', { hasText: 'invalid_credentials' }).waitFor();
  }, ['401']);
  await step('overview', page, async () => {
    await page.getByLabel('Password').fill(setup.superuser.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.locator('.charts svg').first().waitFor();
    await page.getByRole('cell', { name: 'database' }).waitFor();
    const charts = await page.locator('.charts figure').count();
    if (charts !== 3) throw new Error(`expected 3 charts, saw ${charts}`);
  });
  await step('collection', page, async () => {
    await page.getByRole('link', { name: 'Orgs & data' }).click();
    await page.getByRole('link', { name: setup.org, exact: true }).first().click();
    await page.getByRole('link', { name: new RegExp(`^${setup.collection}`) }).click();
    await page.locator('input.filter').fill('status = "todo"');
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.waitForURL(/filter=/);
    // The filtered page replaces the whole screen: wait for its own line, not any row.
    await page.locator('.results p.muted', { hasText: 'match the filter' }).waitFor();
    const statuses = await page.locator('.results tbody tr td:nth-child(4)').allTextContents();
    if (!statuses.length || statuses.some((s) => s !== 'todo')) throw new Error(`the filter showed statuses ${statuses.join(',')}`);
    const count = await page.locator('.results p.muted').textContent();
    if (!count.includes(`${setup.todo_count} records`)) throw new Error(`expected ${setup.todo_count} records, the page says "${count}"`);
  });
  await step('paging', page, async () => {
    await page.locator('input.filter').fill('');
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.waitForURL((u) => !u.hash.includes('filter=status'));
    await page.locator('.results p.muted', { hasText: /^[0-9,]+ records$/ }).waitFor();
    await page.locator('.results tbody tr:nth-child(50)').waitFor();
    const first = await page.locator('.results tbody tr:first-child td:first-child').textContent();
    await page.getByRole('link', { name: 'Next page »' }).click();
    await page.waitForURL(/after=/);
    await page.getByRole('link', { name: '« First page' }).waitFor();
    const second = await page.locator('.results tbody tr:first-child td:first-child').textContent();
    if (first === second) throw new Error('the next page starts with the same record');
  });
  await step('live-list', page, async () => {
    // Another user's write reaches the open list through its realtime stream. The stream
    // opens as the page loads: write until the notice shows.
    const notice = page.locator('p.live', { hasText: /change/ });
    for (let i = 0; i < 20 && !(await notice.isVisible()); i++) {
      await api('PATCH', `/orgs/${setup.org}/${setup.collection}/${setup.record}`, { title: `Changed elsewhere ${i}` });
      await notice.waitFor({ timeout: 500 }).catch(() => {});
    }
    await notice.waitFor();
    await page.locator('p.live').getByRole('button', { name: 'Reload' }).waitFor();
  });
  await step('record', page, async () => {
    await page.goto(`${setup.url}/_/#/orgs/${setup.org}/c/${setup.collection}/${setup.record}`);
    await page.getByLabel(/^title/).fill('Edited in the console');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('.toast', { hasText: 'Saved' }).waitFor();
    const record = await api('GET', `/orgs/${setup.org}/${setup.collection}/${setup.record}`);
    if (record.title !== 'Edited in the console') throw new Error(`the title is ${record.title}`);
  });
  await step('field-error', page, async () => {
    await page.getByLabel(/^estimate_hours/).fill('-5');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('[data-field=estimate_hours] .field-error', { hasText: 'out_of_range' }).waitFor();
  }, ['400']);
  await step('conflict', page, async () => {
    await page.reload();
    await page.getByLabel(/^estimate_hours/).fill('3');
    await api('PATCH', `/orgs/${setup.org}/${setup.collection}/${setup.record}`, { title: 'Changed by someone else' });
    await page.getByLabel(/^title/).fill('My edit');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('.conflict', { hasText: 'Someone else changed this record' }).waitFor();
    const record = await api('GET', `/orgs/${setup.org}/${setup.collection}/${setup.record}`);
    if (record.title !== 'Changed by someone else') throw new Error('the conflicting edit was saved');
  }, ['412']);
  await step('history', page, async () => {
    await page.getByRole('button', { name: 'Reload the current version' }).click();
    await page.getByRole('tab', { name: 'History' }).click();
    await page.locator('tbody tr', { hasText: 'update' }).first().waitFor();
    await page.locator('td', { hasText: setup.superuser.email }).first().waitFor();
  });
  await step('import', page, async () => {
    await page.goto(`${setup.url}/_/#/orgs/${setup.org}/c/${setup.collection}`);
    await page.getByRole('tab', { name: 'Import' }).click();
    await page.getByLabel('File').setInputFiles(setup.import_file);
    await page.getByRole('button', { name: 'Import' }).click();
    await page.locator('.import-out [role=progressbar]').waitFor();
    await page.locator('.import-out .report').waitFor({ timeout: 60000 });
    const written = await page.locator('.import-out .stat', { hasText: 'Written' }).locator('.value').textContent();
    if (written.replace(/,/g, '') !== String(setup.import_rows)) throw new Error(`the report says ${written} written`);
  });
  await step('aggregate', page, async () => {
    await page.getByRole('tab', { name: 'Aggregates' }).click();
    await page.getByLabel('Group by').selectOption('status');
    await page.getByLabel('Measure').selectOption('sum:estimate_hours');
    await page.getByRole('button', { name: 'Aggregate' }).click();
    await page.getByRole('cell', { name: 'backlog' }).waitFor();
    const cells = await page.locator('tbody tr', { hasText: 'backlog' }).locator('td').allTextContents();
    if (!cells.includes(String(setup.import_rows))) throw new Error(`the backlog group reads ${cells.join(' | ')}`);
  });
  await step('export', page, async () => {
    await page.getByRole('tab', { name: 'Records' }).click();
    const download = page.waitForEvent('download');
    await page.getByRole('link', { name: 'Export CSV' }).click();
    const file = await (await download).path();
    if (!file) throw new Error('no export file');
  });
  await step('jobs', page, async () => {
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.getByRole('heading', { name: 'Queues' }).waitFor();
    const row = page.locator('tr', { has: page.getByRole('link', { name: setup.queue, exact: true }) });
    await row.getByRole('button', { name: 'Pause' }).click();
    await row.locator('.badge', { hasText: 'paused' }).waitFor();
    const queues = await api('GET', '/admin/queues');
    if (!queues.items.find((q) => q.name === setup.queue).paused) throw new Error('the queue is not paused');
    await row.getByRole('button', { name: 'Resume' }).click();
    await row.getByRole('button', { name: 'Pause' }).waitFor();
    await page.getByRole('heading', { name: 'Schedules' }).waitFor();
    await page.getByRole('cell', { name: 'keel_cleanup' }).waitFor();
  });
  await step('dead-job', page, async () => {
    await page.goto(`${setup.url}/_/#/jobs/q/${setup.queue}?state=dead`);
    await page.getByRole('link', { name: String(setup.dead_job), exact: true }).click();
    await page.getByRole('heading', { name: 'Attempts and errors' }).waitFor();
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.locator('.toast', { hasText: 'queued again' }).waitFor();
    const job = await api('GET', `/jobs/${setup.dead_job}`);
    if (job.attempt < 1 || job.max_attempts <= 1) throw new Error(`the job was not retried: ${JSON.stringify(job)}`);
  });
  await step('backups', page, async () => {
    await page.getByRole('link', { name: 'Operations' }).click();
    await page.getByRole('button', { name: 'Take a backup now' }).click();
    await page.locator('.ok-box', { hasText: 'Backup: done' }).waitFor({ timeout: 60000 });
    await page.locator('tbody tr').first().waitFor();
    await page.getByRole('button', { name: 'Verify' }).first().click();
    await page.locator('.ok-box', { hasText: 'done' }).filter({ hasText: 'files checked' }).waitFor({ timeout: 60000 });
  });
  await step('signing-keys', page, async () => {
    await page.getByRole('tab', { name: 'Signing keys' }).click();
    await page.getByRole('button', { name: 'Rotate' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Rotate' }).click();
    await page.locator('.toast', { hasText: 'New key added' }).waitFor();
    await page.locator('.badge', { hasText: 'signs and verifies' }).waitFor();
  });
  await step('migrations', page, async () => {
    await page.getByRole('tab', { name: 'Migrations' }).click();
    await page.getByText('The database is up to date').waitFor();
  });
  await step('config', page, async () => {
    await page.getByRole('tab', { name: 'Configuration' }).click();
    await page.getByRole('heading', { name: '[server]' }).waitFor();
    if (setup.secret && (await page.content()).includes(setup.secret)) throw new Error('a secret is on the page');
  });
  await step('audit', page, async () => {
    await page.getByRole('tab', { name: 'Audit log' }).click();
    await page.locator('tbody tr', { hasText: `/api/v1/admin/queues/${setup.queue}/pause` }).first().waitFor();
    await page.locator('tbody tr', { hasText: '/api/v1/admin/keys/rotate' }).locator('td', { hasText: setup.superuser.email }).first().waitFor();
  });
  await step('api-explorer', page, async () => {
    await page.getByRole('link', { name: 'API', exact: true }).click();
    await page.getByPlaceholder('filter routes').fill('/api/v1/orgs');
    await page.locator('ul.routes a', { hasText: /^GET \/api\/v1\/orgs$/ }).click();
    await page.getByRole('button', { name: 'Send' }).click();
    await page.locator('.try-out .badge', { hasText: '200' }).waitFor();
  });
}

// ---- an org manager: only their org, nothing of the operators' screens
{
  const { page } = await open('manager');
  await step('manager', page, async () => {
    await signIn(page, setup.manager);
    await page.getByRole('heading', { name: 'My orgs' }).waitFor();
    await page.getByRole('link', { name: setup.manager_org, exact: true }).first().waitFor();
    if (await page.getByRole('link', { name: setup.org, exact: true }).count()) throw new Error(`the manager sees ${setup.org}`);
    if (await page.getByRole('link', { name: 'Jobs' }).count()) throw new Error('the manager sees the jobs screen');
    await page.goto(`${setup.url}/_/#/orgs/${setup.org}/c/${setup.collection}`);
    await page.locator('.error-box').waitFor();
    await page.goto(`${setup.url}/_/#/orgs/${setup.manager_org}?tab=members`);
    await page.getByRole('cell', { name: setup.manager.email }).waitFor();
  }, ['404', '403']);
}

await browser.close();
if (problems.length) {
  log(`\n${problems.length} problem(s):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  process.exit(1);
}
writeFileSync(join(setup.screens, 'ok'), 'ok\n');
log('the console passed');
