'use strict';
// BullMQ peer benchmark: bulk enqueue, drain throughput, pickup latency.
//
//   node bullmq.js [--concurrency 10,50] [--pickup] [--no-throughput]
//
// Env: PEERS_REDIS_URL, BULL_PREFIX, N, CHUNK, PICKUP_JOBS, PICKUP_INTERVAL_MS,
//      PICKUP_WARMUP, PICKUP_CONCURRENCY, RUN_TIMEOUT_S, SCRIPT_TIMEOUT_S
//      (see README.md).
// Prints one JSON line per measurement on stdout; progress goes to stderr.

const { Queue, Worker } = require('bullmq');
const Redis = require('ioredis');
const bullVersion = require('bullmq/package.json').version;
const os = require('node:os');
const c = require('./common');

const REDIS_URL = process.env.PEERS_REDIS_URL || 'redis://127.0.0.1:6379/5';
const PREFIX = process.env.BULL_PREFIX || 'keelbench';
const QUEUE = 'peers-bench';
const N = c.intEnv('N', 100000);
const CHUNK = c.intEnv('CHUNK', 1000);
const PICKUP_JOBS = c.intEnv('PICKUP_JOBS', 1000);
const PICKUP_INTERVAL_MS = c.numEnv('PICKUP_INTERVAL_MS', 5);
const PICKUP_WARMUP = c.intEnv('PICKUP_WARMUP', 50);
const PICKUP_CONCURRENCY = c.intEnv('PICKUP_CONCURRENCY', 10);
const RUN_TIMEOUT_S = c.intEnv('RUN_TIMEOUT_S', 300);
const SCRIPT_TIMEOUT_S = c.intEnv('SCRIPT_TIMEOUT_S', 1200);

const args = c.parseArgs(process.argv.slice(2));
const CONCURRENCIES = c.intList(args.concurrency || '10,50', '--concurrency');
const PEER = 'bullmq';

// Workers need maxRetriesPerRequest: null on their (blocking) ioredis connection.
const connection = { url: REDIS_URL, maxRetriesPerRequest: null };

function newQueue() {
  return new Queue(QUEUE, {
    connection,
    prefix: PREFIX,
    // Completed jobs are deleted (like graphile-worker and Keel do), so an
    // empty queue at the end means every job finished.
    defaultJobOptions: { removeOnComplete: true, removeOnFail: false },
  });
}

function newWorker(concurrency, processor) {
  return new Worker(QUEUE, processor, {
    connection,
    prefix: PREFIX,
    concurrency,
    autorun: false,
  });
}

// Remove every key of the queue (jobs, events stream, meta) before a run.
async function resetQueue(queue) {
  await queue.obliterate({ force: true });
  if (await queue.isPaused()) await queue.resume();
}

const COUNT_TYPES = ['active', 'wait', 'paused', 'prioritized', 'delayed', 'waiting-children', 'completed', 'failed'];
async function leftovers(queue) {
  const counts = await queue.getJobCounts(...COUNT_TYPES);
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

async function throughput(concurrency) {
  const queue = newQueue();
  await queue.waitUntilReady();
  c.log(`${PEER} C=${concurrency}: obliterate queue`);
  await resetQueue(queue);

  // Bulk enqueue with Queue.addBulk, CHUNK jobs per call.
  const jobs = [];
  const enqStart = c.nowMs();
  for (let done = 0; done < N; ) {
    const k = Math.min(CHUNK, N - done);
    jobs.length = 0;
    for (let i = 0; i < k; i++) jobs.push({ name: 'noop', data: {} });
    await queue.addBulk(jobs);
    done += k;
  }
  const enqMs = c.nowMs() - enqStart;
  const waiting = await queue.getWaitingCount();
  if (waiting !== N) throw new Error(`expected ${N} waiting jobs, found ${waiting}`);
  c.log(`${PEER} C=${concurrency}: enqueued ${N} in ${c.round(enqMs)} ms`);

  const load1 = os.loadavg()[0];
  let firstStart = null;
  let completed = 0;
  let failed = 0;
  let end = null;
  let lastHandlerEnd = null;
  const worker = newWorker(concurrency, async () => {
    if (firstStart === null) firstStart = c.nowMs();
    lastHandlerEnd = c.nowMs();
  });
  // 'completed' fires after moveToCompleted has returned from Redis, i.e. the
  // completion (here: the job's removal) is applied.
  worker.on('completed', () => {
    if (++completed === N) end = c.nowMs();
  });
  worker.on('failed', () => {
    failed++;
  });
  worker.on('error', (e) => c.log(`bullmq worker error: ${e}`));

  let remaining;
  try {
    await worker.waitUntilReady();
    worker.run().catch((e) => c.log(`bullmq worker.run: ${e}`));
    await c.waitFor(() => end !== null || failed > 0, {
      everyMs: 10,
      timeoutMs: RUN_TIMEOUT_S * 1000,
      what: () => `${N} completions (saw ${completed})`,
    });
    if (failed > 0) throw new Error(`${failed} jobs failed`);
  } finally {
    await worker.close();
    remaining = await leftovers(queue);
    await queue.close();
  }
  const wallMs = end - firstStart;
  return {
    peer: PEER,
    version: bullVersion,
    n: N,
    concurrency,
    enqueue_chunk: CHUNK,
    enqueue_per_s: c.round(N / (enqMs / 1000), 0),
    jobs_per_s: c.round(N / (wallMs / 1000), 0),
    wall_s: c.round(wallMs / 1000, 3),
    durable_lag_ms: c.round(end - lastHandlerEnd, 1),
    handled: completed,
    remaining,
    // 1-minute load average when the workers started (2 cores: >2 means contention)
    loadavg_1m: c.round(load1, 2),
    ok: remaining === 0 && completed === N,
  };
}

async function pickup() {
  const concurrency = PICKUP_CONCURRENCY;
  const queue = newQueue();
  await queue.waitUntilReady();
  c.log(`${PEER} pickup: obliterate queue`);
  await resetQueue(queue);

  const load1 = os.loadavg()[0];
  const latencies = [];
  let seen = 0;
  const worker = newWorker(concurrency, async (job) => {
    const lat = c.nowMs() - job.data.enqueued_at;
    seen++;
    if (!job.data.warmup) latencies.push(lat);
  });
  worker.on('error', (e) => c.log(`bullmq worker error: ${e}`));
  let rate;
  try {
    await worker.waitUntilReady();
    worker.run().catch((e) => c.log(`bullmq worker.run: ${e}`));
    await c.sleep(1000); // let the idle worker settle into its blocking wait
    // Warm-up jobs (not counted): first-call JIT and script-loading costs.
    await c.tickleEnqueue(PICKUP_WARMUP, PICKUP_INTERVAL_MS, (p) =>
      queue.add('noop', { ...p, warmup: true }),
    );
    await c.waitFor(() => seen >= PICKUP_WARMUP, { timeoutMs: 30000, what: 'warm-up jobs' });
    await c.sleep(500);
    rate = await c.tickleEnqueue(PICKUP_JOBS, PICKUP_INTERVAL_MS, (p) => queue.add('noop', p));
    await c.waitFor(() => latencies.length >= PICKUP_JOBS, {
      timeoutMs: RUN_TIMEOUT_S * 1000,
      what: () => `${PICKUP_JOBS} pickups (saw ${latencies.length})`,
    });
  } finally {
    await worker.close();
    await queue.close();
  }
  return {
    peer: PEER,
    version: bullVersion,
    test: 'pickup',
    jobs: PICKUP_JOBS,
    concurrency,
    send_per_s: c.round(rate, 0),
    pickup_p50_ms: c.round(c.percentile(latencies, 50), 2),
    pickup_p99_ms: c.round(c.percentile(latencies, 99), 2),
    pickup_max_ms: c.round(c.percentile(latencies, 100), 2),
    loadavg_1m: c.round(load1, 2),
  };
}

// A key with a 30 s expiry, refreshed every 10 s while this process runs.
const LOCK_WAIT_S = c.intEnv('LOCK_WAIT_S', 600);
async function lockRedis() {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 3 });
  const key = `${PREFIX}:peers-bench-lock`;
  const token = `${process.pid}-${Math.random()}`;
  await c.acquireRunLock(async () => (await redis.set(key, token, 'PX', 30000, 'NX')) === 'OK', {
    waitS: LOCK_WAIT_S,
    what: `the Redis lock ${key}`,
  });
  const refresh = setInterval(() => redis.pexpire(key, 30000).catch(() => {}), 10000);
  refresh.unref();
  return async () => {
    clearInterval(refresh);
    if ((await redis.get(key)) === token) await redis.del(key);
    await redis.quit();
  };
}

async function main() {
  c.installCrashHandlers(PEER);
  c.watchdog(SCRIPT_TIMEOUT_S, PEER);
  const unlock = await lockRedis();
  if (!args['no-throughput']) {
    for (const conc of CONCURRENCIES) c.emit(await throughput(conc));
  }
  if (args.pickup) c.emit(await pickup());
  await unlock();
}

main().then(
  () => process.exit(0),
  (e) => {
    c.emit({ peer: PEER, error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  },
);
