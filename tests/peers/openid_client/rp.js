// panva/openid-client, a certified OpenID Connect relying party, signing in at our provider.
//
// One sign-in per run, driven by the Python test over stdin/stdout (one JSON object a line):
//   node rp.js '<settings JSON>'
//   → {"authorize": "<authorization URL>"}     the test signs in and consents over HTTP,
//   ← <the callback URL the provider redirected to>
//   → {"id_token_claims": {...}, "userinfo": {...}, "refreshed": {...}}   or  {"error": ...}
// Settings: issuer, client_id, redirect_uri, scope; nonce (default true: send a random one and
// expect it back; a string: that one; false: none); userinfo, refresh (default true); swap_id_token: an ID token put in place of the
// one the token endpoint answers (to see openid-client refuse a token for another audience);
// logout: a post_logout_redirect_uri, to get the RP-Initiated Logout URL (end_session) that
// openid-client builds with the ID token as id_token_hint and a state (logout_state).
import { createInterface } from 'node:readline';

import * as client from 'openid-client';

const settings = { nonce: true, userinfo: true, refresh: true, ...JSON.parse(process.argv[2]) };
const say = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function swapIdToken(config) {
  // Only the token endpoint's answer is changed; everything else goes out as it is.
  config[client.customFetch] = async (url, options) => {
    const response = await fetch(url, options);
    if (url.toString() !== config.serverMetadata().token_endpoint) return response;
    const body = await response.json();
    if (body.id_token) body.id_token = settings.swap_id_token;
    return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
  };
}

async function main() {
  const config = await client.discovery(
    new URL(settings.issuer), settings.client_id, undefined, client.None(),
    { execute: [client.allowInsecureRequests] },  // a loopback test provider, over http
  );
  if (settings.swap_id_token) swapIdToken(config);
  const verifier = client.randomPKCECodeVerifier();
  const nonce = typeof settings.nonce === 'string' ? settings.nonce : settings.nonce ? client.randomNonce() : undefined;
  const state = client.randomState();
  const parameters = {
    redirect_uri: settings.redirect_uri,
    scope: settings.scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    ...(nonce ? { nonce } : {}),
    ...(settings.max_age !== undefined ? { max_age: String(settings.max_age) } : {}),
  };
  say({ authorize: client.buildAuthorizationUrl(config, parameters).href });
  const callback = (await lines.next()).value;
  const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    maxAge: settings.max_age,  // openid-client then checks the ID token's auth_time
    idTokenExpected: settings.scope.split(' ').includes('openid'),
  });
  const claims = tokens.claims();
  const result = { id_token_claims: claims ?? null, scope: tokens.scope };
  if (settings.userinfo) {
    result.userinfo = await client.fetchUserInfo(
      config, tokens.access_token, claims ? claims.sub : client.skipSubjectCheck,
    );
  }
  if (settings.refresh && tokens.refresh_token) {
    const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
    const refreshedClaims = refreshed.claims();  // openid-client validates a new ID token
    result.refreshed = {
      scope: refreshed.scope,
      access_token: Boolean(refreshed.access_token),
      refresh_token: Boolean(refreshed.refresh_token),
      id_token_claims: refreshedClaims ?? null,
    };
  }
  if (settings.logout) {
    result.logout_state = client.randomState();
    result.end_session = client.buildEndSessionUrl(config, {
      id_token_hint: tokens.id_token,
      post_logout_redirect_uri: settings.logout,
      state: result.logout_state,
    }).href;
  }
  say(result);
}

main().then(
  () => process.exit(0),
  (error) => {
    const { name, code, message, error: oauthError, status, cause } = error;
    // The cause: the check that failed (oauth4webapi), or a resource's WWW-Authenticate
    // challenges, parsed.
    const challenge = Array.isArray(cause) ? cause[0]?.parameters : undefined;
    say({ error: { name, code, message, error: oauthError, status, cause: cause?.message, challenge } });
    process.exit(1);
  },
);
