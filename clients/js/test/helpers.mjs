// Shared test helpers: pusher-js clients pointed at a fake server (always disconnected at the
// end), an in-process channel authorizer signed with the test secret, and bounded waits (every
// wait rejects after a timeout, so a failing test fails instead of hanging).

import { randomBytes } from "node:crypto";
import PusherModule from "pusher-js";
import { withResume } from "../index.mjs";
import { APP_KEY, FakeServer, sign } from "./fake-server.mjs";

/** pusher-js's client class (8.5.0's node build exports it as `{ Pusher }`, the others as the module). */
export const Pusher = typeof PusherModule === "function" ? PusherModule : PusherModule.Pusher;

/** The bound of one wait; a reconnect after a dropped connection takes pusher-js about 1 s. */
export const WAIT_MS = 5_000;

/** Test options for `node:test`: no single test may run longer than this. */
export const TEST = { timeout: 20_000 };

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `predicate` every 5 ms until it is true; rejects after `ms` naming `what`. */
export async function waitUntil(predicate, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/**
 * pusher-js's `channelAuthorization` answering in process, as an app's auth endpoint would:
 * private channels signed with the test secret, presence channels with `user` as channel_data,
 * encrypted channels with a shared secret as well.
 */
export function authorizer(user = { user_id: "u1", user_info: { name: "one" } }) {
  return {
    customHandler: ({ socketId, channelName }, callback) => {
      if (channelName.startsWith("presence-")) {
        const channelData = JSON.stringify(user);
        callback(null, { auth: sign(`${socketId}:${channelName}:${channelData}`), channel_data: channelData });
      } else if (channelName.startsWith("private-encrypted-")) {
        callback(null, { auth: sign(`${socketId}:${channelName}`), shared_secret: randomBytes(32).toString("base64") });
      } else {
        callback(null, { auth: sign(`${socketId}:${channelName}`) });
      }
    },
  };
}

/**
 * Runs `body({ server, open })` with a started fake server (`serverOptions`); `open(options)`
 * makes a pusher-js client to it, wrapped with `withResume` unless `options.resume === false`
 * (`options.onResume` goes to the plugin, `options.user` to the presence authorizer, the rest to
 * pusher-js). Every client is disconnected and the server closed at the end, whatever happened.
 */
export async function withServer(serverOptions, body) {
  const server = new FakeServer(serverOptions);
  const port = await server.start();
  const clients = [];
  const open = ({ resume = true, onResume, user, ...options } = {}) => {
    const pusher = new Pusher(APP_KEY, {
      cluster: "mt1",
      wsHost: "127.0.0.1",
      wsPort: port,
      forceTLS: false,
      enabledTransports: ["ws"],
      channelAuthorization: authorizer(user),
      ...options,
    });
    clients.push(pusher);
    return resume ? withResume(pusher, { onResume }) : pusher;
  };
  try {
    return await body({ server, open });
  } finally {
    for (const client of clients) client.disconnect();
    await server.close();
  }
}

/** Subscribes and waits for `pusher:subscription_succeeded`; resolves with the channel. */
export function subscribed(pusher, name, ms = WAIT_MS) {
  const channel = pusher.subscribe(name);
  return waitFor(channel, "pusher:subscription_succeeded", ms).then(() => channel);
}

/** Resolves with the data of the next `event` on `emitter` (a channel or the connection). */
export function waitFor(emitter, event, ms = WAIT_MS) {
  let handler;
  let timer;
  return new Promise((resolve, reject) => {
    handler = (data) => resolve(data);
    emitter.bind(event, handler);
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${event}`)), ms);
  }).finally(() => {
    clearTimeout(timer);
    emitter.unbind(event, handler);
  });
}

/**
 * Records every event the app sees on `channel`, in arrival order, as `[event, data]`, leaving
 * out pusher-js's own `pusher:*` events.
 */
export function record(channel) {
  const seen = [];
  channel.bind_global((event, data) => {
    if (!event.startsWith("pusher:")) seen.push([event, data]);
  });
  return seen;
}

/** Waits until pusher-js has reconnected after a drop: `connected` again with a new socket id. */
export async function reconnected(pusher, oldSocketId) {
  await waitUntil(
    () => pusher.connection.state === "connected" && pusher.connection.socket_id !== oldSocketId,
    `a reconnect (state ${pusher.connection.state})`,
  );
}

/** A channel name of `kind` ("public", "private", "presence", "private-encrypted"). */
export function channelOf(kind, base = "room") {
  return kind === "public" ? base : `${kind}-${base}`;
}
