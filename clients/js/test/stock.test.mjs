// Against a server without sequences (stock Pusher, or ringcast with event_sequence off) the
// plugin changes nothing: the client sends exactly the frames plain pusher-js sends, and the app
// sees the same events.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { resumeState } from "../index.mjs";
import { reconnected, record, subscribed, TEST, waitUntil, withServer } from "./helpers.mjs";

const CHANNELS = ["room", "private-room", "presence-room"];

/** The socket ids `pusher` gets, in order, from now on. */
function socketIds(pusher) {
  const ids = [];
  pusher.connection.bind("connected", ({ socket_id }) => ids.push(socket_id));
  return ids;
}

// The tests run concurrently: each has its own server and clients, and most wait for pusher-js's
// reconnect delay (1 s after a lost connection).
describe("a server without sequences", { concurrency: true }, () => {
  test("stock server: no resume_after, the same frames and events as plain pusher-js", TEST, () =>
    withServer({ sequence: false }, async ({ server, open }) => {
      const plain = open({ resume: false });
      const wrapped = open();
      const clients = [plain, wrapped].map((pusher) => ({ pusher, ids: socketIds(pusher), seen: [] }));
      for (const { pusher, seen } of clients) {
        for (const name of CHANNELS) seen.push(record(await subscribed(pusher, name)));
      }
      const publishAll = (i) => CHANNELS.forEach((name) => server.publish(name, "my-event", { i }));
      const total = ({ seen }) => seen.reduce((sum, list) => sum + list.length, 0);
      publishAll(1);
      await waitUntil(() => clients.every((c) => total(c) === 3), "the live events");

      server.dropAll();
      publishAll(2); // lost: there is nothing to resume from
      for (const { pusher, ids } of clients) await reconnected(pusher, ids[0]);
      await waitUntil(
        () => clients.every(({ pusher }) => pusher.allChannels().every((channel) => channel.subscribed)),
        "subscribed again",
      );
      publishAll(3);
      await waitUntil(() => clients.every((c) => total(c) === 6), "live events after the reconnect");

      assert.deepEqual(clients[1].seen, clients[0].seen, "the app sees the same events");
      for (const name of CHANNELS) assert.equal(resumeState(wrapped, name), undefined);

      // Every frame each client sent, as text, with the per-connection signatures blanked out.
      const sent = ({ ids }) =>
        server.received
          .filter(({ socketId }) => ids.includes(socketId))
          .map(({ text }) => text.replace(/"auth":"[^"]*"/, '"auth":"<signature>"'));
      const plainFrames = sent(clients[0]);
      assert.equal(plainFrames.length, 6, "3 subscribes on each of 2 connections");
      assert.deepEqual(sent(clients[1]), plainFrames, "the same frames, byte for byte, apart from signatures");
    }),
  );

  test("stock server: a client event and presence members behave as without the plugin", TEST, () =>
    withServer({ sequence: false }, async ({ open }) => {
      const one = open({ user: { user_id: "1", user_info: {} } });
      const two = open({ resume: false, user: { user_id: "2", user_info: {} } });
      const a = await subscribed(one, "presence-chat");
      const b = await subscribed(two, "presence-chat");
      await waitUntil(() => a.members.count === 2 && b.members.count === 2, "both members");
      const seen = record(b);
      a.trigger("client-hello", { x: 1 });
      await waitUntil(() => seen.length === 1, "the client event");
      assert.deepEqual(seen, [["client-hello", { x: 1 }]]);
    }),
  );
});
