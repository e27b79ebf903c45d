// A fresh subscription: the plugin takes epoch and seq from subscription_succeeded, follows the
// seq of every event (REST-published and client events), and sends a plain subscribe.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { resumeState } from "../index.mjs";
import { channelOf, record, subscribed, TEST, waitUntil, withServer } from "./helpers.mjs";

// The tests run concurrently: each has its own server and clients, and most wait for pusher-js's
// reconnect delay (1 s after a lost connection).
describe("tracking a fresh subscription", { concurrency: true }, () => {
  for (const kind of ["public", "private", "presence"]) {
    test(`${kind}: a fresh subscribe starts at the channel's seq and follows each event`, TEST, () =>
      withServer({}, async ({ server, open }) => {
        const name = channelOf(kind);
        // The channel already had events before this client came.
        for (let i = 1; i <= 5; i++) server.publish(name, "before", { i });
        const pusher = open();
        const channel = await subscribed(pusher, name);
        const { epoch } = server.channel(name);
        assert.deepEqual(resumeState(pusher, name), { epoch, seq: 5, resuming: false });
        assert.equal(server.subscribes(name)[0].resume_after, undefined, "a fresh subscribe carries no resume_after");

        const seen = record(channel);
        for (let i = 6; i <= 8; i++) server.publish(name, "my-event", { i });
        await waitUntil(() => seen.length === 3, "3 events");
        assert.deepEqual(seen, [6, 7, 8].map((i) => ["my-event", { i }]), "events reach the app unchanged");
        assert.deepEqual(resumeState(pusher, name), { epoch, seq: 8, resuming: false });
        if (kind === "presence") assert.equal(channel.members.count, 1);
      }),
    );
  }

  test("a client event from another client advances the receiver's seq", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "private-chat";
      const sender = open();
      const receiver = open();
      const sending = await subscribed(sender, name);
      const receiving = await subscribed(receiver, name);
      const seen = record(receiving);
      server.publish(name, "my-event", { i: 1 });
      await waitUntil(() => seen.length === 1, "the published event");
      sending.trigger("client-typing", { who: "sender" });
      await waitUntil(() => seen.length === 2, "the client event");
      assert.deepEqual(seen[1], ["client-typing", { who: "sender" }]);
      assert.equal(resumeState(receiver, name).seq, 2);
      assert.equal(server.channel(name).seq, 2);
    }),
  );
});
