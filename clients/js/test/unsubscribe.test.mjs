// Unsubscribing forgets a channel: a later subscribe is a fresh one, and a channel unsubscribed
// while the connection is down is not resumed (pusher-js does not re-subscribe it either).

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { resumeState } from "../index.mjs";
import { reconnected, record, subscribed, TEST, waitFor, waitUntil, withServer } from "./helpers.mjs";

// The tests run concurrently: each has its own server and clients, and most wait for pusher-js's
// reconnect delay (1 s after a lost connection).
describe("unsubscribe", { concurrency: true }, () => {
  test("unsubscribe clears the state; subscribing again is fresh", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "private-room";
      const pusher = open();
      const channel = await subscribed(pusher, name);
      const seen = record(channel);
      server.publish(name, "my-event", { i: 1 });
      server.publish(name, "my-event", { i: 2 });
      await waitUntil(() => seen.length === 2, "2 events");
      assert.equal(resumeState(pusher, name).seq, 2);

      pusher.unsubscribe(name);
      assert.equal(resumeState(pusher, name), undefined);
      await waitUntil(() => server.received.some(({ frame }) => frame.event === "pusher:unsubscribe"), "pusher:unsubscribe");

      server.publish(name, "my-event", { i: 3 });
      await subscribed(pusher, name);
      const subscribes = server.subscribes(name);
      assert.equal(subscribes.length, 2);
      assert.equal(subscribes[1].resume_after, undefined, "a subscribe after unsubscribe is fresh");
      assert.deepEqual(resumeState(pusher, name), { epoch: server.channel(name).epoch, seq: 3, resuming: false });
    }),
  );

  test("a channel unsubscribed while disconnected is forgotten; the others resume", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const pusher = open();
      await subscribed(pusher, "room-kept");
      await subscribed(pusher, "room-left");
      server.publish("room-kept", "my-event", {});
      server.publish("room-left", "my-event", {});
      await waitUntil(
        () => resumeState(pusher, "room-kept")?.seq === 1 && resumeState(pusher, "room-left")?.seq === 1,
        "one event on each channel",
      );
      const socketId = pusher.connection.socket_id;
      const down = waitFor(pusher.connection, "connecting");
      server.dropAll();
      await down; // pusher-js is between connections
      pusher.unsubscribe("room-left");
      assert.equal(resumeState(pusher, "room-left"), undefined);
      await reconnected(pusher, socketId);
      await waitUntil(() => server.subscribes("room-kept").length === 2, "the re-subscribe");
      assert.deepEqual(server.subscribes("room-kept")[1].resume_after?.seq, 1);
      assert.equal(server.subscribes("room-left").length, 1, "no re-subscribe of the channel left");
    }),
  );

  test("unsubscribing while the subscription is pending leaves no state", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const pusher = open();
      await waitFor(pusher.connection, "connected");
      pusher.subscribe("room");
      pusher.unsubscribe("room"); // pusher-js cancels, then unsubscribes on subscription_succeeded
      await waitUntil(() => server.received.some(({ frame }) => frame.event === "pusher:unsubscribe"), "pusher:unsubscribe");
      assert.equal(resumeState(pusher, "room"), undefined);
    }),
  );
});
