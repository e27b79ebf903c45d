// Events published with the REST library (`pusher`) and received by pusher-js clients.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  WAIT_MS,
  channelName,
  connected,
  nextEvent,
  record,
  rest,
  sleep,
  subscribed,
  waitUntil,
  withClients,
} from "./helpers.mjs";

test("trigger on a public channel reaches a subscriber with the same data", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const client = open();
    await connected(client);
    const name = channelName("public");
    const channel = await subscribed(client, name);
    const data = {
      message: "hello",
      count: 42,
      ratio: 0.5,
      ok: true,
      none: null,
      list: [1, "two", { three: 3 }],
      text: "héllo \u2713 \"quoted\" \\ / \n",
    };
    const received = nextEvent(channel, "greeting");
    const response = await pusher.trigger(name, "greeting", data);
    assert.equal(response.status, 200);
    assert.deepEqual(await received, data);
  });
});

test("trigger on several channels at once reaches every channel", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const names = [channelName("multi-a"), channelName("multi-b"), channelName("multi-c")];
    const clients = names.map(() => open());
    await Promise.all(clients.map((c) => connected(c)));
    const channels = await Promise.all(clients.map((c, i) => subscribed(c, names[i])));
    const recorded = channels.map((channel) => record(channel, "fanout"));

    const data = { hello: "everyone" };
    const response = await pusher.trigger(names, "fanout", data);
    assert.equal(response.status, 200);
    await waitUntil(() => recorded.every((r) => r.length >= 1), WAIT_MS, "the event on all three channels");
    await sleep(200); // a duplicate would arrive right behind the first copy
    for (const [i, r] of recorded.entries()) {
      assert.deepEqual(r, [data], `channel ${names[i]}`);
    }
  });
});

test("triggerBatch delivers every event, in order per channel", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const [a, b] = [channelName("batch-a"), channelName("batch-b")];
    const client = open();
    await connected(client);
    const [channelA, channelB] = await Promise.all([subscribed(client, a), subscribed(client, b)]);
    const seen = { [a]: [], [b]: [] };
    for (const channel of [channelA, channelB]) {
      channel.bind_global((event, data) => {
        if (!event.startsWith("pusher")) seen[channel.name].push([event, data]);
      });
    }

    const batch = [];
    for (let i = 0; i < 8; i++) {
      const channel = i % 3 === 2 ? b : a;
      batch.push({ channel, name: `batch-${i}`, data: { i } });
    }
    const expected = (name) =>
      batch.filter((e) => e.channel === name).map((e) => [e.name, { i: e.data.i }]);
    const response = await pusher.triggerBatch(batch.map((e) => ({ ...e })));
    assert.equal(response.status, 200);

    await waitUntil(
      () => seen[a].length >= expected(a).length && seen[b].length >= expected(b).length,
      WAIT_MS,
      "every batched event",
    );
    await sleep(200);
    assert.deepEqual(seen[a], expected(a));
    assert.deepEqual(seen[b], expected(b));
  });
});

test("triggerBatch on one channel arrives in batch order", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const name = channelName("batch-one");
    const client = open();
    await connected(client);
    const channel = await subscribed(client, name);
    const received = record(channel, "step");
    const batch = Array.from({ length: 10 }, (_, i) => ({ channel: name, name: "step", data: { i } }));
    const response = await pusher.triggerBatch(batch);
    assert.equal(response.status, 200);
    await waitUntil(() => received.length >= 10, WAIT_MS, "all 10 batched events");
    await sleep(200);
    assert.deepEqual(received, batch.map((_, i) => ({ i })));
  });
});

test("socket_id excludes the sender and nobody else", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const name = channelName("exclude");
    const [sender, other] = [open(), open()];
    await Promise.all([connected(sender), connected(other)]);
    const [senderChannel, otherChannel] = await Promise.all([
      subscribed(sender, name),
      subscribed(other, name),
    ]);
    const senderSaw = record(senderChannel, "said");
    const otherSaw = record(otherChannel, "said");

    await pusher.trigger(name, "said", { n: 1 }, { socket_id: sender.connection.socket_id });
    await waitUntil(() => otherSaw.length >= 1, WAIT_MS, "the other client to receive the event");
    await sleep(500);
    assert.deepEqual(otherSaw, [{ n: 1 }]);
    assert.deepEqual(senderSaw, [], "the excluded sender received its own event");

    // The sender is still subscribed: an event without exclusion reaches it, and the excluded
    // one never shows up ahead of it.
    await pusher.trigger(name, "said", { n: 2 });
    await waitUntil(
      () => senderSaw.length >= 1 && otherSaw.length >= 2,
      WAIT_MS,
      "both clients to receive the unexcluded event",
    );
    assert.deepEqual(senderSaw, [{ n: 2 }]);
    assert.deepEqual(otherSaw, [{ n: 1 }, { n: 2 }]);
  });
});
