// Shared helpers for the real-client suite: configuration from the environment, pusher-js
// clients that are always torn down, and bounded waits (every wait rejects after a timeout, so a
// test fails instead of hanging).

import PusherClient from "pusher-js";
import PusherRest from "pusher";
import { randomBytes } from "node:crypto";

function env(name, fallback) {
  const value = process.env[name];
  if (value !== undefined && value !== "") return value;
  if (fallback !== undefined) return fallback;
  throw new Error(
    `${name} is not set: start ringcast and set RINGCAST_HOST, RINGCAST_PORT, RINGCAST_APP_ID, ` +
      `RINGCAST_APP_KEY and RINGCAST_APP_SECRET (see tests/compat/README.md)`,
  );
}

export const config = {
  host: env("RINGCAST_HOST", "127.0.0.1"),
  port: Number(env("RINGCAST_PORT")),
  appId: env("RINGCAST_APP_ID", "123456"),
  key: env("RINGCAST_APP_KEY", "app-key"),
  secret: env("RINGCAST_APP_SECRET", "app-secret"),
  /** The broker's event-loop threads (only used to report and pick connections per core). */
  cores: Number(env("RINGCAST_CORES", "2")),
  /**
   * `RINGCAST_TLS=1`: the broker's port is its TLS listener; pusher-js connects with
   * `forceTLS: true` (wss) and the REST library with `useTLS: true` (https). The test CA is
   * trusted through `NODE_EXTRA_CA_CERTS`.
   */
  tls: env("RINGCAST_TLS", "0") === "1",
};

/** The default bound for one wait. */
export const WAIT_MS = 10_000;

/** A channel name unique to this run, so tests never see each other's traffic. */
export function channelName(prefix) {
  return `${prefix}-${process.pid}-${randomBytes(4).toString("hex")}`;
}

/** Resolves with the promise's value, or rejects after `ms` naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `predicate` every 10 ms until it is true; rejects after `ms`. */
export async function waitUntil(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * The REST library pointed at the broker under test; `extra` adds or overrides options (e.g.
 * `encryptionMasterKeyBase64`, or a wrong `secret` to forge signatures).
 */
export function rest(extra = {}) {
  return new PusherRest({
    appId: config.appId,
    key: config.key,
    secret: config.secret,
    host: config.host,
    port: config.port,
    useTLS: config.tls,
    timeout: WAIT_MS,
    ...extra,
  });
}

/**
 * Runs `body(open)`, where `open(key?, extra?)` makes a pusher-js client (`extra`: more pusher-js
 * options, e.g. `authorizing(...)`), and disconnects every client it opened at the end, whatever
 * happened: `await withClients(async (open) => { ... })`.
 */
export async function withClients(body) {
  const opened = [];
  const open = (key = config.key, extra = {}) => {
    const client = new PusherClient(key, {
      cluster: "mt1", // required by the options type; ignored because wsHost is set
      wsHost: config.host,
      wsPort: config.port,
      wssPort: config.port,
      forceTLS: config.tls,
      enabledTransports: ["ws"], // pusher-js's WebSocket transport, ws:// or wss://
      disableStats: true,
      ...extra,
    });
    opened.push(client);
    trackSockets(client);
    return client;
  };
  try {
    return await body(open);
  } finally {
    for (const client of opened) {
      try {
        client.disconnect();
      } catch {
        // already gone
      }
    }
    for (const client of opened) releaseClosedSockets(client);
  }
}

// When the server closes a connected pusher-js client (e.g. 4009 after terminate_connections),
// pusher-js answers the close event by calling close() on its faye-websocket socket again, which
// starts faye's 30 s close timer on a socket that is already closed; nothing ever clears it, so
// node would wait 30 s before exiting. These two remember each client's sockets and clear such a
// stale timer at the end (only on sockets whose readyState is CLOSED; a no-op otherwise).
const socketsOf = new WeakMap();

function trackSockets(client) {
  const sockets = [];
  socketsOf.set(client, sockets);
  client.connection.bind("state_change", ({ current }) => {
    const socket = client.connection.connection?.transport?.socket;
    if (current === "connected" && socket && !sockets.includes(socket)) sockets.push(socket);
  });
}

function releaseClosedSockets(client) {
  for (const socket of socketsOf.get(client) ?? []) {
    if (socket.readyState === 3 && socket._closeTimer) {
      clearTimeout(socket._closeTimer);
      socket._closeTimer = null;
    }
  }
}

/**
 * Waits until the client's connection is `connected`; fails fast when it ends up `failed`,
 * `unavailable` or `disconnected` instead, naming the last connection error.
 */
export function connected(client, ms = WAIT_MS) {
  const connection = client.connection;
  if (connection.state === "connected") return Promise.resolve(client);
  let lastError;
  const onError = (error) => (lastError = error);
  let onChange;
  return withTimeout(
    new Promise((resolve, reject) => {
      onChange = ({ current }) => {
        if (current === "connected") {
          resolve(client);
        } else if (["failed", "unavailable", "disconnected"].includes(current)) {
          reject(
            new Error(`connection went to ${current} instead of connected; last error: ${JSON.stringify(lastError)}`),
          );
        }
      };
      connection.bind("state_change", onChange);
      connection.bind("error", onError);
    }),
    ms,
    "the connection to reach `connected`",
  ).finally(() => {
    connection.unbind("state_change", onChange);
    connection.unbind("error", onError);
  });
}

/** Subscribes to a public channel and waits for `pusher:subscription_succeeded`. */
export function subscribed(client, name, ms = WAIT_MS) {
  const channel = client.subscribe(name);
  return withTimeout(
    new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_succeeded", () => resolve(channel));
      channel.bind("pusher:subscription_error", (status) =>
        reject(new Error(`subscription to ${name} failed: ${JSON.stringify(status)}`)),
      );
    }),
    ms,
    `pusher:subscription_succeeded on ${name}`,
  );
}

/** The next `event` on `channel` (its data). */
export function nextEvent(channel, event, ms = WAIT_MS) {
  return withTimeout(
    new Promise((resolve) => {
      const handler = (data) => {
        channel.unbind(event, handler);
        resolve(data);
      };
      channel.bind(event, handler);
    }),
    ms,
    `event ${event} on ${channel.name}`,
  );
}

/** Records every `event` on `channel` (its data) into the returned array, in arrival order. */
export function record(channel, event) {
  const received = [];
  channel.bind(event, (data) => received.push(data));
  return received;
}

// ---- Authorized clients: private, presence and encrypted channels, user sign-in ----

/**
 * pusher-js options whose authorizers run in process with the REST library's helpers, the way an
 * app's auth endpoint would: `channelAuthorization.customHandler` answers with
 * `server.authorizeChannel(socketId, channelName, presenceData)` and
 * `userAuthentication.customHandler` with `server.authenticateUser(socketId, user)`.
 *
 * `identity` is read when pusher-js asks, so it may be filled in after the client is made:
 * - `presence`: `{ user_id, user_info }`, sent as channel_data on `presence-*` channels only;
 * - `user`: `{ id, user_info?, watchlist? }` for `pusher.signin()`;
 * - `auth(socketId, channelName)`: replaces the channel authorizer (e.g. to forge a signature).
 * A throwing authorizer is reported to pusher-js as an error, never thrown into its internals.
 */
export function authorizing(server, identity = {}) {
  const answer = (callback, make) => {
    let result;
    try {
      result = make();
    } catch (error) {
      callback(error instanceof Error ? error : new Error(String(error)), null);
      return;
    }
    callback(null, result);
  };
  return {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        answer(callback, () => {
          if (identity.auth) return identity.auth(socketId, channelName);
          const presence = channelName.startsWith("presence-") ? identity.presence : undefined;
          if (channelName.startsWith("presence-") && !presence) {
            throw new Error(`no presence data for ${channelName}`);
          }
          return server.authorizeChannel(socketId, channelName, presence);
        }),
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) =>
        answer(callback, () => {
          if (!identity.user) throw new Error("no user to sign in as");
          return server.authenticateUser(socketId, identity.user);
        }),
    },
  };
}

/** The broker core a connected client landed on (its socket id carries the core number). */
export function coreOf(client, cores = config.cores) {
  const low = BigInt(client.connection.socket_id.split(".")[1]);
  return Number(low % BigInt(cores));
}

/**
 * Makes `n` connected clients with `make()`, trying up to `3 * n` extra connections until every
 * core of the broker has its share (`n / cores`, at least one; the kernel picks the core, surplus
 * clients are disconnected). Returns them alternating cores (`[core 0, core 1, core 0, ...]`) and
 * whether the spread was reached (when not, the order is still as alternating as possible).
 */
export async function openSpread(make, n, cores = config.cores) {
  const all = [];
  const add = async (count) => {
    const fresh = Array.from({ length: count }, () => make());
    await Promise.all(fresh.map((c) => connected(c)));
    all.push(...fresh);
  };
  const share = Math.max(1, Math.floor(n / cores));
  const covered = () => {
    if (n < cores) return new Set(all.map((c) => coreOf(c, cores))).size >= n;
    const counts = new Array(cores).fill(0);
    for (const client of all) counts[coreOf(client, cores)]++;
    return counts.every((count) => count >= share);
  };
  await add(n);
  for (let attempt = 0; attempt < 3 * n && !covered(); attempt++) await add(1);
  const byCore = Array.from({ length: cores }, () => []);
  for (const client of all) byCore[coreOf(client, cores)].push(client);
  const chosen = [];
  for (let round = 0; chosen.length < n; round++) {
    for (const list of byCore) if (list[round] && chosen.length < n) chosen.push(list[round]);
  }
  for (const client of all) if (!chosen.includes(client)) client.disconnect();
  return { clients: chosen, spread: covered() };
}

/**
 * Subscribes and waits for the subscription to fail: resolves with the `pusher:subscription_error`
 * data; rejects if the subscription succeeds instead.
 */
export function subscriptionError(client, name, ms = WAIT_MS) {
  const channel = client.subscribe(name);
  return withTimeout(
    new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_succeeded", () =>
        reject(new Error(`subscription to ${name} succeeded; expected pusher:subscription_error`)),
      );
      channel.bind("pusher:subscription_error", resolve);
    }),
    ms,
    `pusher:subscription_error on ${name}`,
  );
}

/**
 * Records every event on `channel` as `[event, data]`, in arrival order (pusher-js gives global
 * bindings no metadata; see `recordWithMetadata`).
 */
export function recordAll(channel) {
  const received = [];
  channel.bind_global((event, data) => received.push([event, data]));
  return received;
}

/** Records the named events on `channel` as `[event, data, metadata]`, in arrival order. */
export function recordWithMetadata(channel, ...events) {
  const received = [];
  for (const event of events) {
    channel.bind(event, (data, metadata) => received.push([event, data, metadata]));
  }
  return received;
}

/**
 * Records the raw protocol messages (`{event, channel, data, user_id}`, as pusher-js decoded them)
 * the client receives, optionally only those for which `filter(message)` holds. Sees what the
 * server sent before pusher-js filters or de-duplicates anything.
 */
export function recordMessages(client, filter = () => true) {
  const received = [];
  client.connection.bind("message", (message) => {
    if (filter(message)) received.push(message);
  });
  return received;
}

/** Records the connection's `error` events and state changes: `{ errors, states }`. */
export function recordConnection(client) {
  const errors = [];
  const states = [];
  client.connection.bind("error", (error) => errors.push(error));
  client.connection.bind("state_change", ({ current }) => states.push(current));
  return { errors, states };
}

/** The close or error code in a pusher-js connection `error` event, whatever its wrapping. */
export function errorCode(error) {
  return error?.data?.code ?? error?.error?.data?.code;
}

/**
 * Signs in (`pusher.signin()` with the client's `userAuthentication`) and waits until pusher-js
 * has joined the `#server-to-user-{id}` channel, which it does after `pusher:signin_success`.
 * Fails fast if the connection goes away (the broker closes with 4009 on a bad signin).
 */
export async function signedIn(client, ms = WAIT_MS) {
  const { errors } = recordConnection(client);
  client.signin();
  const deadline = Date.now() + ms;
  while (!client.user.serverToUserChannel?.subscribed) {
    const state = client.connection.state;
    if (["disconnected", "failed", "unavailable"].includes(state)) {
      throw new Error(`connection went to ${state} during signin; errors: ${JSON.stringify(errors)}`);
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${ms} ms waiting for signin (user_data ${JSON.stringify(client.user.user_data)}, ` +
          `errors ${JSON.stringify(errors)})`,
      );
    }
    await sleep(10);
  }
  return client.user.user_data;
}

/** Waits until the client's connection state is one of `states` (default: it has ended). */
export function reachesState(client, states = ["disconnected", "failed"], ms = WAIT_MS) {
  return waitUntil(
    () => states.includes(client.connection.state),
    ms,
    `connection ${client.connection.socket_id} to reach ${states.join(" or ")} (is ${client.connection.state})`,
  );
}

/** `response.json()` of a REST call after asserting status 200 (the body is in the message). */
export async function okJson(responsePromise, what) {
  const response = await responsePromise;
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${what}: status ${response.status}: ${text}`);
  return JSON.parse(text);
}
