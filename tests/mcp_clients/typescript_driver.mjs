// The official MCP TypeScript client (@modelcontextprotocol/client, pinned in package.json) as
// a host application would run it, for tests/test_interop_mcp_clients.py.
//
//   node typescript_driver.mjs <mcp-server-url>
//
// Reads one JSON command a line on stdin ({"tool": name, "arguments": {...}}) and writes one
// JSON event a line on stdout: `registered`, `tokens`, `authorize` (the host "opens the browser"
// at that URL: the test drives Chromium there), `result`. The OAuth work (discovery, dynamic
// registration, PKCE, `resource`, step-up, refresh) is the SDK's own; this file only supplies
// what the SDK leaves to the host: storage, a loopback redirect URI, the browser hand-off, the
// `state` check, and the host's one retry after a sign-in.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import readline from 'node:readline';

import { Client, StreamableHTTPClientTransport, UnauthorizedError } from '@modelcontextprotocol/client';

const serverUrl = new URL(process.argv[2]);
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

// --- The loopback redirect URI (RFC 8252 §7.3): callbacks by state ----------------------------
const callbacks = new Map(); // state -> URLSearchParams
const waiters = new Map(); // state -> resolve
const listener = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://127.0.0.1');
    if (url.pathname !== '/callback') {
        response.writeHead(404).end();
        return;
    }
    const state = url.searchParams.get('state') ?? '';
    callbacks.set(state, url.searchParams);
    waiters.get(state)?.(url.searchParams);
    response.writeHead(200, { 'Content-Type': 'text/html' });
    response.end('<h1>Signed in</h1><p>You can close this tab.</p>');
});
await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve));
const redirectUrl = `http://127.0.0.1:${listener.address().port}/callback`;

function callbackFor(state) {
    if (callbacks.has(state)) return Promise.resolve(callbacks.get(state));
    return new Promise((resolve) => waiters.set(state, resolve));
}

// --- The host's OAuthClientProvider: in-memory storage and the browser hand-off ----------------
class HostProvider {
    pendingState = undefined;
    get redirectUrl() {
        return redirectUrl;
    }
    get clientMetadata() {
        return {
            client_name: 'Interop test host (MCP TypeScript SDK)',
            redirect_uris: [redirectUrl],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
        };
    }
    state() {
        return randomBytes(16).toString('base64url');
    }
    clientInformation() {
        return this.client;
    }
    saveClientInformation(client) {
        this.client = client;
        emit({ event: 'registered', client });
    }
    tokens() {
        return this.tokenSet;
    }
    saveTokens(tokens) {
        this.tokenSet = tokens;
        emit({ event: 'tokens', tokens });
    }
    redirectToAuthorization(url) {
        this.pendingState = url.searchParams.get('state');
        emit({ event: 'authorize', url: url.href });
    }
    saveCodeVerifier(verifier) {
        this.verifier = verifier;
    }
    codeVerifier() {
        return this.verifier;
    }
    invalidateCredentials(scope) {
        if (scope === 'all' || scope === 'client') this.client = undefined;
        if (scope === 'all' || scope === 'tokens') this.tokenSet = undefined;
    }
}

const provider = new HostProvider();
let transport;
let client;

/** After the SDK sent the user to sign in: the callback whose state is the one sent. */
async function finishSignIn() {
    const state = provider.pendingState;
    provider.pendingState = undefined;
    await transport.finishAuth(await callbackFor(state));
}

/** `action`, and once more after a sign-in if it needed one (as the SDK's examples do). */
async function withSignIn(action) {
    try {
        return await action();
    } catch (error) {
        if (!(error instanceof UnauthorizedError) || provider.pendingState === undefined) throw error;
        await finishSignIn();
        return await action();
    }
}

async function connect() {
    transport = new StreamableHTTPClientTransport(serverUrl, { authProvider: provider });
    client = new Client({ name: 'interop-test-host', version: '1.0.0' });
    await client.connect(transport);
}

async function run(command) {
    if (client === undefined) {
        try {
            await connect();
        } catch (error) {
            if (!(error instanceof UnauthorizedError) || provider.pendingState === undefined) {
                client = undefined;
                throw error;
            }
            await finishSignIn();
            await connect(); // a fresh transport, now holding tokens
        }
    }
    return withSignIn(() => client.callTool({ name: command.tool, arguments: command.arguments ?? {} }));
}

for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    try {
        const result = await run(JSON.parse(line));
        emit({ event: 'result', ok: !result.isError, result });
    } catch (error) {
        emit({ event: 'result', ok: false, error: `${error?.name}: ${error?.message}` });
    }
}
await client?.close();
listener.close();
