// The shell: session, navigation and the hash router. Each screen is a view function
// K.views.NAME(main, params) that fills `main`; routes are #/path?query.
K.icon = document.querySelector('link[rel=icon]').getAttribute('href');

const ROUTES = [
  [/^\/$/, 'home'],
  [/^\/orgs$/, 'orgs'],
  [/^\/orgs\/([^/]+)$/, 'org', ['org']],
  [/^\/orgs\/([^/]+)\/c\/([^/]+)$/, 'collection', ['org', 'collection']],
  [/^\/orgs\/([^/]+)\/c\/([^/]+)\/new$/, 'create', ['org', 'collection']],
  [/^\/orgs\/([^/]+)\/c\/([^/]+)\/([^/]+)$/, 'record', ['org', 'collection', 'id']],
  [/^\/global\/c\/([^/]+)$/, 'collection', ['collection']],
  [/^\/global\/c\/([^/]+)\/new$/, 'create', ['collection']],
  [/^\/global\/c\/([^/]+)\/([^/]+)$/, 'record', ['collection', 'id']],
  [/^\/jobs$/, 'queues'],
  [/^\/jobs\/q\/([^/]+)$/, 'queue', ['queue']],
  [/^\/jobs\/j\/([^/]+)$/, 'job', ['id']],
  [/^\/ops$/, 'ops'],
  [/^\/api$/, 'explorer'],
];

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = hash.split('?');
  const q = Object.fromEntries(new URLSearchParams(query));
  for (const [pattern, view, names = []] of ROUTES) {
    const m = pattern.exec(path);
    if (m) {
      const params = { ...q, query: q };
      names.forEach((name, i) => (params[name] = decodeURIComponent(m[i + 1])));
      return { path, view, params };
    }
  }
  return { path, view: 'missing', params: { query: q } };
}

K.superuser = () => Boolean(K.session && K.session.user && K.session.user.superuser);

/** The orgs the user manages (owner or the role below), by slug. */
K.managed = () => (K.session.memberships || []).filter((m) => K.schema.roles.indexOf(m.role) <= 1 && K.schema.roles.indexOf(m.role) >= 0);

K.collection = (name) => K.schema.collections.find((c) => c.name === name);

K.views.missing = (main) => K.mount(main, K.h('h1', 'Not found'), K.h('p', 'There is no such page in the console. ', K.h('a', { href: '#/' }, 'Back to the start')));

K.views.home = function (main) {
  if (K.superuser()) return K.views.overview(main);
  location.replace('#/orgs');
};

function nav(current) {
  const item = (href, label, active) => K.h('a', { href, class: active ? 'active' : null, 'aria-current': active ? 'page' : null }, label);
  const section = current.split('/')[1] || '';
  const links = [];
  if (K.superuser()) links.push(item('#/', 'Overview', section === ''));
  links.push(item('#/orgs', K.superuser() ? 'Orgs & data' : 'My orgs', section === 'orgs' || section === 'global'));
  if (K.superuser()) {
    links.push(item('#/jobs', 'Jobs', section === 'jobs'));
    links.push(item('#/ops', 'Operations', section === 'ops'));
  }
  links.push(item('#/api', 'API', section === 'api'));
  const signOut = K.button('Sign out', async () => {
    await K.api('POST', '/auth/logout').catch(() => {});
    K.session = null;
    K.views.login(document.getElementById('app'));
  }, '.link');
  return K.h('header.top',
    K.h('a.brand', { href: '#/' }, K.h('img', { src: K.icon, alt: '' }), K.h('span', K.schema.title || K.schema.app), K.h('small', 'console')),
    K.h('nav.main', links),
    K.h('div.who', K.h('span', K.session.user.email), K.superuser() ? K.badge('superuser', 'super') : null, signOut));
}

let renderToken = 0;
/** Stops timers and streams of the previous screen: views register them with K.every and K.listen. */
let timers = [];
let streams = [];
K.every = (ms, fn) => timers.push(setInterval(fn, ms));

/**
 * Follows a realtime stream (`/api/v1/...events`) while the screen is shown: `handlers` maps
 * event names to functions of the parsed data. The browser reconnects and resumes by itself;
 * an `end` or `revoked` event closes the stream.
 */
K.listen = function (path, handlers) {
  const source = new EventSource(`/api/v1${path}`);
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(e.data ? JSON.parse(e.data) : null));
  }
  for (const name of ['end', 'revoked']) source.addEventListener(name, () => source.close());
  streams.push(source);
  return source;
};

async function render() {
  const token = ++renderToken;
  timers.forEach(clearInterval);
  timers = [];
  streams.forEach((s) => s.close());
  streams = [];
  const app = document.getElementById('app');
  if (!K.session) return;
  const { path, view, params } = parseHash();
  const main = K.h('main.content', { id: 'main', tabindex: -1 });
  K.mount(app, nav(path), main);
  const fn = K.views[view] || K.views.missing;
  try {
    await fn(main, params);
  } catch (error) {
    if (token === renderToken) K.mount(main, K.h('h1', 'Something went wrong'), K.errorBox(error));
  }
}

K.refresh = render;

/** Loads the session and the schema, then shows the page asked for (or `next`). */
K.start = async function (next) {
  const me = await K.get('/auth/me');
  if (!me.user) throw new Error('the console needs a user session, not an API key');
  K.session = me;
  K.schema = await K.get('/schema');
  document.title = `${K.schema.title || K.schema.app} · Keel console`;
  if (next && next !== location.hash) location.hash = next;
  else render();
};

K.signedOut = function () {
  K.session = null;
  K.views.login(document.getElementById('app'), { next: location.hash });
};

window.addEventListener('hashchange', render);
document.addEventListener('DOMContentLoaded', () => {
  // No session cookie (its readable CSRF twin is absent): straight to the sign-in form,
  // without a request that can only answer 401.
  if (!K.csrf()) return K.views.login(document.getElementById('app'), { next: location.hash });
  K.start().catch((error) => {
    if (error.status === 401) K.views.login(document.getElementById('app'), { next: location.hash });
    else K.mount(document.getElementById('app'), K.h('main.content', K.errorBox(error)));
  });
});
