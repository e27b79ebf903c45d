// pusher-js connecting to ringcast: the handshake, and refusal of an unknown app key.

import { test } from "node:test";
import assert from "node:assert/strict";

import { WAIT_MS, connected, sleep, withClients, withTimeout } from "./helpers.mjs";

test("pusher-js connects and gets a socket id", async () => {
  await withClients(async (open) => {
    const client = open();
    await connected(client);
    assert.equal(client.connection.state, "connected");
    assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  });
});

test("two pusher-js clients get different socket ids", async () => {
  await withClients(async (open) => {
    const [a, b] = [open(), open()];
    await Promise.all([connected(a), connected(b)]);
    assert.notEqual(a.connection.socket_id, b.connection.socket_id);
  });
});

// The broker answers an unknown key with pusher:error 4001 and closes; pusher-js treats 4000-4099
// as "refused": it reports the error and disconnects for good instead of retrying.
test("an unknown app key is refused with 4001 and pusher-js stops retrying", async () => {
  await withClients(async (open) => {
    const client = open("nope");
    const states = [];
    client.connection.bind("state_change", ({ current }) => states.push(current));
    const error = await withTimeout(
      new Promise((resolve) => client.connection.bind("error", resolve)),
      WAIT_MS,
      "an `error` on the connection of a client with an unknown key",
    );
    // During the handshake pusher-js wraps the PusherError in a WebSocketError; after it, the
    // PusherError comes bare. Either way the code must be 4001.
    const pusherError = error.type === "PusherError" ? error : error.error;
    assert.equal(pusherError?.type, "PusherError", `unexpected error shape: ${JSON.stringify(error)}`);
    assert.equal(pusherError.data?.code, 4001, `unexpected error: ${JSON.stringify(error)}`);

    const end = () => ["disconnected", "failed"].includes(client.connection.state);
    await withTimeout(
      new Promise((resolve) => {
        if (end()) return resolve();
        client.connection.bind("state_change", () => end() && resolve());
      }),
      WAIT_MS,
      "the refused connection to end disconnected or failed",
    );
    assert.ok(!states.includes("connected"), `connected with an unknown key: ${states}`);

    // No retry: pusher-js would go back to `connecting` within ~1 s if it were backing off.
    const settled = states.length;
    await sleep(2000);
    assert.deepEqual(states.slice(settled), [], `pusher-js kept retrying: ${states}`);
  });
});
