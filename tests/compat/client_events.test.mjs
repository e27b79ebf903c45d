// Client events (`channel.trigger("client-...")` in pusher-js) relayed between clients on private
// and presence channels. The broker under test has `enable_client_events = true` for the app.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  WAIT_MS,
  authorizing,
  channelName,
  coreOf,
  openSpread,
  recordConnection,
  recordMessages,
  recordWithMetadata,
  rest,
  sleep,
  subscribed,
  waitUntil,
  withClients,
} from "./helpers.mjs";

/** How long to listen for an echo that must not come. */
const QUIET_MS = 500;

/** The client events these tests send, as `[event, data, metadata]`. */
const EVENTS = ["client-typing", "client-reply"];
const recordClientEvents = (channel) => recordWithMetadata(channel, ...EVENTS);

/** Waits for relayed client events; on a timeout names the errors the broker sent the clients. */
async function relayed(predicate, what, clients) {
  const connections = clients.map((client) => recordConnection(client));
  try {
    await waitUntil(predicate, WAIT_MS, what);
  } catch (error) {
    const errors = connections.flatMap(({ errors }) => errors);
    throw new Error(
      `${error.message}; errors on the clients' connections: ${JSON.stringify(errors)} ` +
        "(the broker must run with enable_client_events = true for the app)",
    );
  }
}

test("client events on a private channel reach the other subscribers, never the sender", async (t) => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("private-chat");
    const { clients } = await openSpread(() => open(undefined, authorizing(server)), 3);
    const [alice, bob, carol] = clients;
    t.diagnostic(`cores: alice ${coreOf(alice)}, bob ${coreOf(bob)}, carol ${coreOf(carol)}`);
    const channels = [];
    for (const client of clients) channels.push(await subscribed(client, name));
    const [aliceSaw, bobSaw, carolSaw] = channels.map((channel) => recordClientEvents(channel));

    const data = { text: "typing…", n: 1, nested: { list: [1, 2] } };
    const atBoth = () => bobSaw.length >= 1 && carolSaw.length >= 1;
    const seen = relayed(atBoth, "alice's client event at bob and carol", clients);
    assert.equal(channels[0].trigger("client-typing", data), true);
    await seen;
    // No user_id metadata on private channels.
    assert.deepEqual(bobSaw, [["client-typing", data, {}]]);
    assert.deepEqual(carolSaw, [["client-typing", data, {}]]);

    // bob answers; alice and carol get it, bob does not.
    channels[1].trigger("client-reply", { ok: true });
    await waitUntil(
      () => aliceSaw.length >= 1 && carolSaw.length >= 2,
      WAIT_MS,
      "bob's client event at alice and carol",
    );
    await sleep(QUIET_MS);
    assert.deepEqual(aliceSaw, [["client-reply", { ok: true }, {}]], "alice's own event echoed?");
    assert.deepEqual(bobSaw, [["client-typing", data, {}]], "bob's own event echoed?");
    assert.deepEqual(carolSaw, [
      ["client-typing", data, {}],
      ["client-reply", { ok: true }, {}],
    ]);
  });
});

test("client events on a presence channel carry the sender's user_id, never echoed", async (t) => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("presence-chat");
    const make = () => {
      const identity = {};
      const client = open(undefined, authorizing(server, identity));
      client.identity = identity;
      return client;
    };
    const { clients } = await openSpread(make, 2);
    const [alice, bob] = clients;
    t.diagnostic(`cores: alice ${coreOf(alice)}, bob ${coreOf(bob)}`);
    alice.identity.presence = { user_id: "alice", user_info: { name: "Alice" } };
    bob.identity.presence = { user_id: "bob", user_info: { name: "Bob" } };
    const aliceChannel = await subscribed(alice, name);
    const bobChannel = await subscribed(bob, name);
    const aliceSaw = recordClientEvents(aliceChannel);
    const bobSaw = recordClientEvents(bobChannel);
    const bobRaw = recordMessages(bob, (m) => m.channel === name && m.event.startsWith("client-"));

    // The relayed user_id comes from alice's channel_data, never from the event's data.
    const seen = relayed(() => bobSaw.length >= 1, "alice's client event at bob", clients);
    aliceChannel.trigger("client-typing", { from: "alice", user_id: "mallory" });
    await seen;
    assert.deepEqual(bobSaw, [["client-typing", { from: "alice", user_id: "mallory" }, { user_id: "alice" }]]);
    assert.equal(bobRaw[0]?.user_id, "alice", JSON.stringify(bobRaw));

    bobChannel.trigger("client-typing", { from: "bob" });
    await waitUntil(() => aliceSaw.length >= 1, WAIT_MS, "bob's client event at alice");
    await sleep(QUIET_MS);
    assert.deepEqual(aliceSaw, [["client-typing", { from: "bob" }, { user_id: "bob" }]]);
    assert.equal(bobSaw.length, 1, `bob got his own event back: ${JSON.stringify(bobSaw)}`);
  });
});
