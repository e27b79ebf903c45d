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

/** The REST library pointed at the broker under test. */
export function rest() {
  return new PusherRest({
    appId: config.appId,
    key: config.key,
    secret: config.secret,
    host: config.host,
    port: config.port,
    useTLS: false,
    timeout: WAIT_MS,
  });
}

/**
 * Runs `body(open)`, where `open(key?)` makes a pusher-js client, and disconnects every client
 * it opened at the end, whatever happened: `await withClients(async (open) => { ... })`.
 */
export async function withClients(body) {
  const opened = [];
  const open = (key = config.key) => {
    const client = new PusherClient(key, {
      cluster: "mt1", // required by the options type; ignored because wsHost is set
      wsHost: config.host,
      wsPort: config.port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
    });
    opened.push(client);
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
