// The API client: every call goes to /api/v1 with the cookie session and, for writes, the
// session's CSRF token. Errors come back as K.ApiError with the API's code and details.
K.ApiError = class extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.details = error.details;
  }
};

K.csrf = function () {
  const match = document.cookie.split('; ').find((c) => c.startsWith('keel_csrf='));
  return match ? decodeURIComponent(match.slice('keel_csrf='.length)) : '';
};

/** K.api(method, path, {body, query, headers, raw}): {status, data, headers}. */
K.api = async function (method, path, options = {}) {
  const { body, query, headers = {}, raw } = options;
  let url = path.startsWith('/') && !path.startsWith('/api/') ? `/api/v1${path}` : path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    if ([...q].length) url += (url.includes('?') ? '&' : '?') + q;
  }
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (method !== 'GET' && method !== 'HEAD') init.headers['X-CSRF-Token'] = K.csrf();
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer || typeof body === 'string') init.body = body;
    else { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
  }
  const response = await fetch(url, init);
  if (raw) return response;
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!response.ok) {
    const error = new K.ApiError(response.status, data);
    if (response.status === 401 && K.session && !path.startsWith('/auth/')) K.signedOut();
    throw error;
  }
  return { status: response.status, data, headers: response.headers };
};

K.get = (path, query) => K.api('GET', path, { query }).then((r) => r.data);

/** The base path of a collection: an org's or the global one. */
K.base = (org) => (org ? `/orgs/${encodeURIComponent(org)}` : '/global');

/** Follows a job (every 500 ms) until it ends, calling onProgress meanwhile; resolves with it. */
K.waitJob = async function (id, onProgress) {
  for (;;) {
    const job = await K.get(`/jobs/${id}`);
    if (['completed', 'dead', 'cancelled'].includes(job.state)) return job;
    if (onProgress) onProgress(job);
    await new Promise((r) => setTimeout(r, 500));
  }
};
