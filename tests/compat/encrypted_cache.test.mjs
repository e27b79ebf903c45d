// End-to-end encrypted channels (`private-encrypted-*`: the REST library encrypts with
// `encryptionMasterKeyBase64`, pusher-js decrypts with the `shared_secret` from `authorizeChannel`)
// and cache channels (`cache-*`: the last event is replayed to new subscribers, or
// `pusher:cache_miss`).

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import {
  WAIT_MS,
  authorizing,
  channelName,
  connected,
  nextEvent,
  recordAll,
  recordMessages,
  rest,
  sleep,
  subscribed,
  waitUntil,
  withClients,
} from "./helpers.mjs";

const MASTER_KEY = randomBytes(32).toString("base64");

/** Events on a channel recorded with `recordAll`, without pusher-js's own subscription events. */
const appEvents = (recorded) => recorded.filter(([event]) => !event.startsWith("pusher:subscription"));

test("an encrypted channel: the broker relays ciphertext that pusher-js decrypts", async () => {
  const server = rest({ encryptionMasterKeyBase64: MASTER_KEY });
  await withClients(async (open) => {
    const name = channelName("private-encrypted-x");
    const [client, other] = [open(undefined, authorizing(server)), open(undefined, authorizing(server))];
    await Promise.all([connected(client), connected(other)]);
    const [channel, otherChannel] = [await subscribed(client, name), await subscribed(other, name)];
    const raw = recordMessages(client, (m) => m.channel === name && m.event === "sealed");

    const data = { secret: "the eagle has landed", n: 7, text: "héllo \u2713" };
    const received = nextEvent(channel, "sealed");
    const otherReceived = nextEvent(otherChannel, "sealed");
    const response = await server.trigger(name, "sealed", data);
    assert.equal(response.status, 200);
    assert.deepEqual(await received, data);
    assert.deepEqual(await otherReceived, data);

    // On the wire: only the library's envelope, never the plaintext.
    assert.equal(raw.length, 1, JSON.stringify(raw));
    assert.deepEqual(Object.keys(raw[0].data).sort(), ["ciphertext", "nonce"], JSON.stringify(raw[0]));
    assert.ok(!JSON.stringify(raw[0]).includes("eagle"), "plaintext on the wire");
  });
});

test("a cache channel replays the last event to a new subscriber, right after subscription_succeeded", async () => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("cache-x");
    assert.equal((await server.trigger(name, "snapshot", { version: 1 })).status, 200);
    assert.equal((await server.trigger(name, "snapshot", { version: 2 })).status, 200);

    for (const round of [1, 2]) {
      const client = open();
      await connected(client);
      // Record before subscribing: the cached event may arrive in the same read as the success.
      const seen = recordAll(client.subscribe(name));
      await subscribed(client, name);
      await waitUntil(() => seen.length >= 2, WAIT_MS, `the cached event (subscriber ${round})`);
      await sleep(200);
      assert.deepEqual(
        seen.map(([event, data]) => [event, data]),
        [
          ["pusher:subscription_succeeded", {}],
          ["snapshot", { version: 2 }],
        ],
        `subscriber ${round}`,
      );
    }
  });
});

test("subscribing to an empty cache channel gets pusher:cache_miss, then live events", async () => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("cache-y");
    const client = open();
    await connected(client);
    const seen = recordAll(client.subscribe(name));
    const channel = await subscribed(client, name);
    await waitUntil(() => appEvents(seen).length >= 1, WAIT_MS, "pusher:cache_miss");
    assert.deepEqual(appEvents(seen).map(([event]) => event), ["pusher:cache_miss"]);

    const live = nextEvent(channel, "first");
    await server.trigger(name, "first", { n: 1 });
    assert.deepEqual(await live, { n: 1 });
    await sleep(200);
    assert.deepEqual(appEvents(seen).map(([event]) => event), ["pusher:cache_miss", "first"]);
  });
});

test("private and encrypted cache channels replay after authorization; pusher-js decrypts the replay", async () => {
  const server = rest({ encryptionMasterKeyBase64: MASTER_KEY });
  await withClients(async (open) => {
    const privateName = channelName("private-cache-z");
    const encryptedName = channelName("private-encrypted-cache-z");
    await server.trigger(privateName, "state", { who: "private" });
    await server.trigger(encryptedName, "state", { who: "encrypted", secret: 42 });

    const client = open(undefined, authorizing(server));
    await connected(client);
    const privateSeen = recordAll(client.subscribe(privateName));
    const encryptedSeen = recordAll(client.subscribe(encryptedName));
    await Promise.all([subscribed(client, privateName), subscribed(client, encryptedName)]);
    await waitUntil(
      () => appEvents(privateSeen).length >= 1 && appEvents(encryptedSeen).length >= 1,
      WAIT_MS,
      "both cached events",
    );
    assert.deepEqual(appEvents(privateSeen).map(([e, d]) => [e, d]), [["state", { who: "private" }]]);
    assert.deepEqual(appEvents(encryptedSeen).map(([e, d]) => [e, d]), [["state", { who: "encrypted", secret: 42 }]]);
  });
});
