// scripts/oidc-test-provider.mjs — a real OpenID provider for the sign-in tests: oidc-provider
// (npm, OpenID Certified), installed by scripts/test-tools.sh under target/oidc-provider.
//
//   node scripts/oidc-test-provider.mjs --modules DIR --port N [--kid K] [--clock-offset S]
//
// One confidential client, `keel` / `keel-secret`, with PKCE. There is no login form: an
// authorization request signs in the account named by its `login_hint` and grants what it
// asks (the tests play the user). An account `alice@example.com` has that address, verified;
// `bob+unverified@example.com` has `bob@example.com`, not verified.
// --kid names the signing key, made fresh at each start: restarting with another kid is a key
// rotation. --clock-offset shifts the provider's clock (a negative one issues ID tokens that
// have already expired).
// Only for tests on loopback: any redirect URI is allowed.

import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const port = Number(args.port);
const kid = args.kid || 'key-1';
const offset = Number(args['clock-offset'] || 0) * 1000;
if (offset) {
  const realNow = Date.now;
  Date.now = () => realNow() + offset;
}

const { default: Provider } = await import(
  pathToFileURL(join(args.modules, 'node_modules', 'oidc-provider', 'lib', 'index.js')).href
);

console.log('oidc-test-provider: module loaded');
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
console.log('oidc-test-provider: key made');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'keel',
      client_secret: 'keel-secret',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: ['keel-test-cookies'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: id.replace('+unverified', ''),
          email_verified: !id.includes('+unverified'),
          name: id.split('@')[0],
        };
      },
    };
  },
});
provider.Client.prototype.redirectUriAllowed = () => true;

// The user's part: sign in as the login hint, grant everything asked for.
async function interact(req, res) {
  const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
  if (prompt.name === 'login') {
    const accountId = params.login_hint || 'alice@example.com';
    return provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
  }
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const { details } = prompt;
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
    mergeWithLastSubmission: true,
  });
}

const callback = provider.callback();
http
  .createServer((req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interact(req, res).catch((error) => {
        res.statusCode = 500;
        res.end(String(error));
      });
      return;
    }
    callback(req, res);
  })
  .listen(port, '127.0.0.1', () => console.log(`oidc-test-provider on ${issuer} (kid ${kid})`));
