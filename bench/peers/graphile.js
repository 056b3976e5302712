'use strict';
// graphile-worker peer benchmark: bulk enqueue, drain throughput, pickup latency.
//
//   node graphile.js --mode batched|default [--concurrency 10,50] [--pickup] [--no-throughput]
//
// Env: PEERS_PG_URL, N, CHUNK, PICKUP_JOBS, PICKUP_INTERVAL_MS, PICKUP_WARMUP,
//      PICKUP_CONCURRENCY, GW_LOCAL_QUEUE_SIZE, GW_COMPLETE_BATCH_DELAY,
//      GW_FAIL_BATCH_DELAY, RUN_TIMEOUT_S, SCRIPT_TIMEOUT_S (see README.md).
// Prints one JSON line per measurement on stdout; progress goes to stderr.

// Per-job "Completed task ..." log lines would dominate a no-op workload;
// graphile-worker's own perf test switches them off the same way.
process.env.NO_LOG_SUCCESS = '1';

const pg = require('pg');
const { run, makeWorkerUtils, Logger } = require('graphile-worker');
const gwVersion = require('graphile-worker/package.json').version;
const os = require('node:os');
const c = require('./common');

const PG_URL = process.env.PEERS_PG_URL || 'postgres://postgres@127.0.0.1:5432/keel_bench_peers';
const SCHEMA = 'graphile_worker';
const N = c.intEnv('N', 100000);
const CHUNK = c.intEnv('CHUNK', 1000);
const PICKUP_JOBS = c.intEnv('PICKUP_JOBS', 1000);
const PICKUP_INTERVAL_MS = c.numEnv('PICKUP_INTERVAL_MS', 5);
const PICKUP_WARMUP = c.intEnv('PICKUP_WARMUP', 50);
const PICKUP_CONCURRENCY = c.intEnv('PICKUP_CONCURRENCY', 10);
const RUN_TIMEOUT_S = c.intEnv('RUN_TIMEOUT_S', 300);
const SCRIPT_TIMEOUT_S = c.intEnv('SCRIPT_TIMEOUT_S', 1200);

const args = c.parseArgs(process.argv.slice(2));
const MODE = args.mode || 'batched';
if (MODE !== 'batched' && MODE !== 'default') throw new Error(`--mode must be batched or default`);
const CONCURRENCIES = c.intList(args.concurrency || '10,50', '--concurrency');
const PEER = `graphile-worker-${MODE}`;

// Batched mode: the configuration graphile-worker's performance page uses for
// its headline figures (local queue of 500, completion/failure batching with a
// 0 ms window). Default mode: none of these (each worker fetches its own job
// and completes it in its own statement).
const LOCAL_QUEUE_SIZE = c.intEnv('GW_LOCAL_QUEUE_SIZE', 500);
const COMPLETE_BATCH_DELAY = c.intEnv('GW_COMPLETE_BATCH_DELAY', 0);
const FAIL_BATCH_DELAY = c.intEnv('GW_FAIL_BATCH_DELAY', 0);
const modePreset =
  MODE === 'batched'
    ? {
        worker: {
          localQueue: { size: LOCAL_QUEUE_SIZE },
          completeJobBatchDelay: COMPLETE_BATCH_DELAY,
          failJobBatchDelay: FAIL_BATCH_DELAY,
        },
      }
    : { worker: {} };
const modeConfig =
  MODE === 'batched'
    ? {
        local_queue_size: LOCAL_QUEUE_SIZE,
        complete_job_batch_delay_ms: COMPLETE_BATCH_DELAY,
        fail_job_batch_delay_ms: FAIL_BATCH_DELAY,
      }
    : {};

// Only warnings and errors reach stderr.
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') c.log(`graphile-worker ${level}: ${message}`);
});

async function withClient(fn) {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

// Drop graphile-worker's schema and reinstall it, so each run starts with
// empty, unbloated tables.
async function resetSchema() {
  await withClient((client) => client.query(`drop schema if exists ${SCHEMA} cascade`));
  const utils = await makeWorkerUtils({ connectionString: PG_URL, logger });
  try {
    await utils.migrate();
  } finally {
    await utils.release();
  }
}

async function remainingJobs(client) {
  const { rows } = await client.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`);
  return rows[0].n;
}

// Starts a worker pool. `runner.early` rejects if the pool stops on its own
// (e.g. a fatal error or a "breaking migration" notice from another process),
// so a waiting benchmark fails at once instead of at its timeout;
// `runner.halt()` stops it unless it already stopped.
async function runnerFor(concurrency, taskList) {
  const runner = await startRunner(concurrency, taskList);
  let stopped = false;
  runner.early = runner.promise.then(
    () => {
      stopped = true;
      throw new Error('graphile-worker stopped on its own before the run finished');
    },
    (e) => {
      stopped = true;
      throw e;
    },
  );
  runner.early.catch(() => {});
  runner.halt = async () => {
    if (!stopped) await runner.stop();
  };
  return runner;
}

async function startRunner(concurrency, taskList) {
  return run({
    connectionString: PG_URL,
    concurrency,
    // graphile-worker warns when the pool is smaller than the concurrency.
    maxPoolSize: Math.max(10, concurrency + 1),
    noHandleSignals: true,
    logger,
    taskList,
    // No crontab: parsedCronItems overrides the crontab file lookup.
    parsedCronItems: [],
    preset: modePreset,
  });
}

async function throughput(concurrency) {
  c.log(`${PEER} C=${concurrency}: reset schema`);
  await resetSchema();

  // Bulk enqueue through WorkerUtils.addJobs (graphile_worker.add_jobs), CHUNK per call.
  const utils = await makeWorkerUtils({ connectionString: PG_URL, logger });
  const specs = [];
  const enqStart = c.nowMs();
  for (let done = 0; done < N; ) {
    const k = Math.min(CHUNK, N - done);
    specs.length = 0;
    for (let i = 0; i < k; i++) specs.push({ identifier: 'noop', payload: {} });
    await utils.addJobs(specs);
    done += k;
  }
  const enqMs = c.nowMs() - enqStart;
  await utils.release();

  const check = new pg.Client({ connectionString: PG_URL });
  await check.connect();
  const queued = await remainingJobs(check);
  if (queued !== N) throw new Error(`expected ${N} queued jobs, found ${queued}`);
  c.log(`${PEER} C=${concurrency}: enqueued ${N} in ${c.round(enqMs)} ms`);

  const load1 = os.loadavg()[0];
  let firstStart = null;
  let lastHandlerEnd = null;
  let handled = 0;
  let allHandled;
  const allHandledP = new Promise((resolve) => (allHandled = resolve));
  const runner = await runnerFor(concurrency, {
    noop: async () => {
      if (firstStart === null) firstStart = c.nowMs();
      lastHandlerEnd = c.nowMs();
      if (++handled === N) allHandled();
    },
  });

  let remaining;
  let end;
  try {
    // Every handler has run...
    await c.withTimeout(
      Promise.race([allHandledP, runner.early]),
      RUN_TIMEOUT_S * 1000,
      () => `${N} handler calls (saw ${handled})`,
    );
    // ...and every completion is committed: graphile-worker deletes a job's
    // row when it commits its completion, so the table is empty exactly when
    // the last completion is durable. Poll tightly (2 ms) for that moment.
    await c.waitFor(async () => (await remainingJobs(check)) === 0, {
      early: runner.early,
      everyMs: 2,
      timeoutMs: RUN_TIMEOUT_S * 1000,
      what: 'all completions to commit',
    });
  } finally {
    end = c.nowMs();
    await runner.halt();
    remaining = await remainingJobs(check);
    await check.end();
  }
  const wallMs = end - firstStart;
  return {
    peer: PEER,
    version: gwVersion,
    n: N,
    concurrency,
    enqueue_chunk: CHUNK,
    enqueue_per_s: c.round(N / (enqMs / 1000), 0),
    jobs_per_s: c.round(N / (wallMs / 1000), 0),
    wall_s: c.round(wallMs / 1000, 3),
    // how long after the last handler returned its completion became durable
    durable_lag_ms: c.round(end - lastHandlerEnd, 1),
    handled,
    remaining,
    // 1-minute load average when the workers started (2 cores: >2 means contention)
    loadavg_1m: c.round(load1, 2),
    ok: remaining === 0 && handled === N,
    ...modeConfig,
    max_pool_size: Math.max(10, concurrency + 1),
  };
}

async function pickup() {
  const concurrency = PICKUP_CONCURRENCY;
  c.log(`${PEER} pickup: reset schema`);
  await resetSchema();

  const load1 = os.loadavg()[0];
  const latencies = [];
  let seen = 0;
  // WorkerUtils first: it checks the schema on creation, which a running worker would
  // otherwise take for a migration and stop.
  const utils = await makeWorkerUtils({ connectionString: PG_URL, logger });
  await utils.migrate();
  const runner = await runnerFor(concurrency, {
    noop: async (payload) => {
      const lat = c.nowMs() - payload.enqueued_at;
      seen++;
      if (!payload.warmup) latencies.push(lat);
    },
  });
  let rate;
  try {
    await c.sleep(1000); // let the idle worker settle into LISTEN
    // Warm-up jobs (not counted): first-call JIT and prepared-statement costs.
    await c.tickleEnqueue(PICKUP_WARMUP, PICKUP_INTERVAL_MS, (p) =>
      utils.addJob('noop', { ...p, warmup: true }),
    );
    await c.waitFor(() => seen >= PICKUP_WARMUP, { early: runner.early, timeoutMs: 30000, what: 'warm-up jobs' });
    await c.sleep(500);
    rate = await c.tickleEnqueue(PICKUP_JOBS, PICKUP_INTERVAL_MS, (p) => utils.addJob('noop', p));
    await c.waitFor(() => latencies.length >= PICKUP_JOBS, {
      early: runner.early,
      timeoutMs: RUN_TIMEOUT_S * 1000,
      what: () => `${PICKUP_JOBS} pickups (saw ${latencies.length})`,
    });
  } finally {
    await utils.release();
    await runner.halt();
  }
  return {
    peer: PEER,
    version: gwVersion,
    test: 'pickup',
    jobs: PICKUP_JOBS,
    concurrency,
    send_per_s: c.round(rate, 0),
    pickup_p50_ms: c.round(c.percentile(latencies, 50), 2),
    pickup_p99_ms: c.round(c.percentile(latencies, 99), 2),
    pickup_max_ms: c.round(c.percentile(latencies, 100), 2),
    loadavg_1m: c.round(load1, 2),
    ...modeConfig,
  };
}

// Held for the whole process on its own connection (released when it closes).
const LOCK_KEY = 7300417; // arbitrary, shared by every graphile.js process
const LOCK_WAIT_S = c.intEnv('LOCK_WAIT_S', 600);
async function lockDatabase() {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  await c.acquireRunLock(
    async () => (await client.query('select pg_try_advisory_lock($1) as ok', [LOCK_KEY])).rows[0].ok,
    { waitS: LOCK_WAIT_S, what: 'the database lock' },
  );
  return client;
}

async function main() {
  c.installCrashHandlers(PEER);
  c.watchdog(SCRIPT_TIMEOUT_S, PEER);
  const lock = await lockDatabase();
  if (!args['no-throughput']) {
    for (const conc of CONCURRENCIES) c.emit(await throughput(conc));
  }
  if (args.pickup) c.emit(await pickup());
  await lock.end();
}

main().then(
  () => process.exit(0),
  (e) => {
    c.emit({ peer: PEER, error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  },
);
