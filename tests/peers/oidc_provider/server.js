// panva/node-oidc-provider as a local stand-in for Keycloak: a real, certified, independently
// written authorization server that our resource server must interoperate with.
//
// Only the machine-to-machine parts are wired (client_credentials with RFC 8707 resource
// indicators, RFC 7662 introspection, RFC 7009 revocation, JWKS, OpenID discovery), so it runs
// without a browser. All state is in memory and a fresh RSA signing key is made at every start.
//
// Settings (environment, or --name=value arguments, e.g. --access-token-format=jwt):
//   PORT                 port to listen on, on 127.0.0.1 (required)
//   ISSUER               issuer URL (default http://127.0.0.1:PORT)
//   ACCESS_TOKEN_FORMAT  opaque | jwt: format of access tokens issued for RESOURCE (default opaque)
//   RESOURCE             resource indicator(s) accepted, comma separated, e.g. http://127.0.0.1:8000/mcp
//   RS_CLIENT_SECRET     secret of the confidential client `mcp-resource-server` (may introspect any token)
//   TEST_CLIENT_SECRET   secret of `test-client` and `bench-client` (client_credentials only)
//   ACCESS_TOKEN_TTL     access token lifetime in seconds (default 3600)
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
// The bundled in-memory adapter; subclassed only so oidc-provider does not warn that it is in use.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const SCOPES = 'read write admin';
const RS_CLIENT_ID = 'mcp-resource-server';

function settings() {
  const args = Object.fromEntries(process.argv.slice(2)
    .filter((arg) => arg.startsWith('--') && arg.includes('='))
    .map((arg) => {
      const [name, ...value] = arg.slice(2).split('=');
      return [name.toUpperCase().replaceAll('-', '_'), value.join('=')];
    }));
  const get = (name, fallback) => args[name] ?? process.env[name] ?? fallback;
  const port = Number(get('PORT'));
  if (!Number.isInteger(port) || port <= 0) throw new Error('PORT must be set to a TCP port');
  const format = get('ACCESS_TOKEN_FORMAT', 'opaque');
  if (!['opaque', 'jwt'].includes(format)) throw new Error('ACCESS_TOKEN_FORMAT must be opaque or jwt');
  const resources = get('RESOURCE', '').split(',').map((r) => r.trim()).filter(Boolean);
  if (!resources.length) throw new Error('RESOURCE must name the resource server URL, e.g. http://127.0.0.1:8000/mcp');
  return {
    port,
    issuer: get('ISSUER', `http://127.0.0.1:${port}`),
    format,
    resources: new Set(resources),
    rsSecret: get('RS_CLIENT_SECRET', 'dev-mcp-resource-server-secret'),
    clientSecret: get('TEST_CLIENT_SECRET', 'test-client-secret'),
    ttl: Number(get('ACCESS_TOKEN_TTL', '3600')),
  };
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `peer-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
}

function machineClient(clientId, secret) {
  return {
    client_id: clientId,
    client_secret: secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: SCOPES,
  };
}

function configuration(s) {
  return {
    adapter: class InMemoryAdapter extends MemoryAdapter {},
    jwks: { keys: [signingKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
    clients: [
      // The resource server only introspects; it has no grant of its own.
      { ...machineClient(RS_CLIENT_ID, s.rsSecret), grant_types: [], scope: undefined },
      machineClient('test-client', s.clientSecret),
      machineClient('bench-client', s.clientSecret),
    ],
    ttl: {
      AccessToken: s.ttl,
      ClientCredentials: s.ttl,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      Session: 3600,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      introspection: {
        enabled: true,
        // Like a Keycloak resource-server client: `mcp-resource-server` may introspect any token
        // (including ones bound to its audience); other clients only their own tokens.
        allowedPolicy: async (ctx, caller, token) => caller.clientId === RS_CLIENT_ID
          || caller.clientId === token.clientId,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          if (!s.resources.has(resource)) throw new errors.InvalidTarget();
          return {
            scope: SCOPES,
            audience: resource,
            accessTokenTTL: s.ttl,
            accessTokenFormat: s.format,
            ...(s.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
          };
        },
      },
    },
  };
}

const s = settings();
const provider = new Provider(s.issuer, configuration(s));
// Quiet by default: one line per unexpected server error, nothing per request.
provider.on('server_error', (ctx, err) => console.error(`oidc-provider server_error: ${err.stack || err}`));

const server = createServer(provider.callback());
server.listen(s.port, '127.0.0.1', () => console.log(`ready ${s.issuer} (access tokens: ${s.format})`));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections(); // do not wait for a client's keep-alive connections
  });
}
