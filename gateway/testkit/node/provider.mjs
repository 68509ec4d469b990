// A real OpenID Provider (panva's oidc-provider) for the gateway's tests. Started by
// gateway/testkit/src/oidc.rs as `node provider.mjs <config.json>`; see that file for the
// configuration's shape. Logs go to stderr; one line `READY <issuer>` goes to stdout once it
// listens on 127.0.0.1.
//
// What it is set up for:
// - devInteractions: the built-in login form accepts any `login` (the account id, the `sub`);
//   the password is ignored.
// - consent is granted automatically (loadExistingGrant below) unless the config says
//   `"consent": "prompt"`; then the built-in consent page with its "Continue" button shows.
// - PKCE (S256) required for every client; client_secret_basic and client_secret_post.
// - refresh tokens for every client allowed the refresh_token grant (granted by default).
// - RP-initiated logout (a confirmation page, "Yes, sign me out") and back-channel logout.
// - test-only: `POST /test/backchannel?sub=<sub>&sid=<sid>[&client_id=<id>]` sends a back-channel
//   logout token to the clients (all that have a backchannel_logout_uri, or the one named).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts ?? {};
const log = (...args) => console.error('[provider]', ...args);

// Claims that the standard scopes carry; every other claim any account has rides on `openid`, so
// that (with conformIdTokenClaims false) it lands in the ID token whatever the scope.
const STANDARD = {
  email: ['email', 'email_verified'],
  profile: ['name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
    'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at'],
};
const standardClaims = new Set(Object.values(STANDARD).flat());
const custom = new Set();
for (const claims of Object.values(accounts)) {
  for (const name of Object.keys(claims)) {
    if (name !== 'sub' && !standardClaims.has(name)) custom.add(name);
  }
}
const claims = config.claims ?? {
  acr: null,
  sid: null,
  auth_time: null,
  iss: null,
  openid: ['sub', ...custom],
  ...STANDARD,
};

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const kid = () => randomBytes(8).toString('hex');
  return {
    keys: [
      { ...rsa, kid: `rs256-${kid()}`, use: 'sig', alg: 'RS256' },
      { ...ec, kid: `es256-${kid()}`, use: 'sig', alg: 'ES256' },
    ],
  };
}

const clients = (config.clients ?? []).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

const server = createServer();
server.listen(config.port ?? 0, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: signingKeys(),
  cookies: {
    keys: [randomBytes(32).toString('hex')],
    // v8's default `SameSite=None` needs `Secure`, which plain http cannot have: browsers drop it
    // (and oidc-provider falls back to a `.legacy` twin). Lax, as oidc-provider v9 defaults to.
    long: { httpOnly: true, sameSite: 'lax' },
  },
  claims,
  conformIdTokenClaims: false,
  async findAccount(_ctx, sub) {
    // Any login works (devInteractions); a configured account brings its claims.
    const extra = accounts[sub] ?? {};
    return {
      accountId: sub,
      async claims() {
        return { ...extra, sub };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
  },
  pkce: { required: () => true },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Called once the End-User is known. Auto-consent: the grant (this session's, or a new one)
  // gets whatever this request asks for, so oidc-provider's consent prompt has nothing to ask.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    if (config.consent === 'prompt') return grant;
    grant ??= new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    const scope = [...ctx.oidc.requestParamOIDCScopes].join(' ');
    if (scope) grant.addOIDCScope(scope);
    const requested = [...ctx.oidc.requestParamClaims];
    if (requested.length) grant.addOIDCClaims(requested);
    await grant.save();
    return grant;
  },
  // Seconds; any of oidc-provider's ttl keys (AccessToken, IdToken, RefreshToken, Session, ...).
  ttl: { ...(config.ttl ?? {}) },
});

provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err));
provider.on('backchannel.success', (_ctx, client, sub, sid) => log('backchannel.success', client.clientId, sub, sid));
provider.on('backchannel.error', (_ctx, err, client, sub, sid) => log('backchannel.error', client.clientId, sub, sid, err?.message));
provider.on('grant.error', (_ctx, err) => log('grant.error', err?.message, err?.error_description ?? ''));
provider.on('authorization.error', (_ctx, err) => log('authorization.error', err?.message, err?.error_description ?? ''));
provider.on('end_session.error', (_ctx, err) => log('end_session.error', err?.message, err?.error_description ?? ''));

// Test-only route: send back-channel logout tokens on demand.
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/test/backchannel') {
    const { sub, sid, client_id: clientId } = ctx.query;
    if (!sub) {
      ctx.status = 400;
      ctx.body = 'sub is required';
      return;
    }
    const targets = clientId ? [clientId] : clients.filter((c) => c.backchannel_logout_uri).map((c) => c.client_id);
    const results = [];
    for (const id of targets) {
      const client = await provider.Client.find(id);
      if (!client?.backchannelLogoutUri) {
        results.push({ client_id: id, ok: false, error: 'unknown client or no backchannel_logout_uri' });
        continue;
      }
      try {
        await client.backchannelLogout(sub, sid);
        results.push({ client_id: id, ok: true });
      } catch (err) {
        results.push({ client_id: id, ok: false, error: err.message });
      }
    }
    log('test backchannel', sub, sid, JSON.stringify(results));
    ctx.status = results.every((r) => r.ok) ? 200 : 502;
    ctx.body = { results };
    return;
  }
  await next();
});

// Static clients are validated on first use; validate them now, so a bad one fails the start.
for (const { client_id: clientId } of clients) {
  try {
    if (!await provider.Client.find(clientId)) throw new Error('not found');
  } catch (err) {
    log(`invalid client ${clientId}: ${err.message} ${err.error_description ?? ''}`);
    process.exit(1);
  }
}

server.on('request', provider.callback());
log(`listening on ${issuer}`);
process.stdout.write(`READY ${issuer}\n`);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
