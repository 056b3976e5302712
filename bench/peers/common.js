'use strict';
// Shared helpers for the peer job-queue benchmarks (graphile.js, bullmq.js).
// Everything here is dependency-free so the two peers share one clock and one
// way of reporting.

const { performance } = require('node:perf_hooks');

// Wall-clock milliseconds with sub-millisecond resolution. Producer and
// consumer run in the same process, so this clock agrees with itself.
function nowMs() {
  return performance.timeOrigin + performance.now();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function intEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return v;
}

function numEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return v;
}

// Tiny argv parser: --key value, --key=value, and bare --flag (=> true).
function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq !== -1) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      out[a.slice(2)] = argv[++i];
    } else {
      out[a.slice(2)] = true;
    }
  }
  return out;
}

function intList(s, name) {
  return String(s)
    .split(',')
    .filter((x) => x !== '')
    .map((x) => {
      const v = Number(x);
      if (!Number.isInteger(v) || v <= 0) throw new Error(`${name}: bad value ${x}`);
      return v;
    });
}

// Nearest-rank percentile on a sorted copy.
function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function round(v, digits = 1) {
  if (v === null || v === undefined || !Number.isFinite(v)) return v;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

// One JSON line per measurement on stdout; everything else goes to stderr.
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(...args) {
  process.stderr.write(`[${new Date().toISOString()}] ${args.join(' ')}\n`);
}

// Resolves when `cond()` is true, polling every `everyMs`; rejects after
// `timeoutMs` with `what` in the message.
// `what` may be a function, called only for the error message. If `early`
// (a promise) rejects first, waitFor rejects with its error.
async function waitFor(cond, { everyMs = 5, timeoutMs, what, early }) {
  let failed = null;
  if (early) early.catch((e) => (failed = e));
  const deadline = nowMs() + timeoutMs;
  for (;;) {
    if (failed) throw failed;
    if (await cond()) return;
    if (nowMs() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${describe(what)}`);
    await sleep(everyMs);
  }
}

function describe(what) {
  return typeof what === 'function' ? what() : what;
}

// Resolves like `promise`, or rejects after `timeoutMs`.
function withTimeout(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${describe(what)}`)),
      timeoutMs,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Kills the process if the whole script runs longer than `seconds`, so a
// stuck peer can never hang run.sh.
function watchdog(seconds, peer) {
  const t = setTimeout(() => {
    emit({ peer, error: `watchdog: script exceeded ${seconds} s` });
    process.exit(3);
  }, seconds * 1000);
  t.unref();
}

// Sends `count` single-job enqueues one at a time (each awaited), paced to one
// every `intervalMs` on a fixed schedule (5 ms => ~200/s), each stamped with
// its enqueue time just before the call. Returns the achieved send rate.
async function tickleEnqueue(count, intervalMs, enqueueOne) {
  const t0 = nowMs();
  for (let i = 0; i < count; i++) {
    const due = t0 + i * intervalMs;
    const wait = due - nowMs();
    if (wait > 0.5) await sleep(wait);
    await enqueueOne({ i, enqueued_at: nowMs() });
  }
  return count / ((nowMs() - t0) / 1000);
}

// A crash anywhere (including a rejected promise a library does not await)
// still prints one JSON error line for the peer, then exits non-zero.
function installCrashHandlers(peer) {
  const die = (e) => {
    emit({ peer, error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
}

// Polls `tryLock()` until it returns true, so two benchmark processes never
// share a database or Redis at the same time (each resets the other's state).
async function acquireRunLock(tryLock, { waitS, what }) {
  const deadline = nowMs() + waitS * 1000;
  let told = false;
  while (!(await tryLock())) {
    if (!told) {
      log(`another peers benchmark holds ${what}; waiting up to ${waitS} s`);
      told = true;
    }
    if (nowMs() > deadline) throw new Error(`another peers benchmark held ${what} for over ${waitS} s`);
    await sleep(1000);
  }
}

module.exports = {
  installCrashHandlers,
  acquireRunLock,
  nowMs,
  sleep,
  intEnv,
  numEnv,
  parseArgs,
  intList,
  percentile,
  round,
  emit,
  log,
  waitFor,
  withTimeout,
  watchdog,
  tickleEnqueue,
};
