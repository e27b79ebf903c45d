// Resume after a lost connection: the server drops the socket, events are published while the
// client is away, pusher-js reconnects by itself, and its re-subscribe carries resume_after.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { RESUME_EVENT, resumeState } from "../index.mjs";
import { channelOf, reconnected, record, sleep, subscribed, TEST, waitFor, waitUntil, withServer } from "./helpers.mjs";

const events = (from, to) => Array.from({ length: to - from + 1 }, (_, k) => ["my-event", { i: from + k }]);

/** Publishes my-event {i} for each i in from..to. */
function publish(server, name, from, to) {
  for (let i = from; i <= to; i++) server.publish(name, "my-event", { i });
}

/** A client subscribed to `name` that has received events 1..3 live. */
async function caughtUp(server, open, name) {
  const outcomes = [];
  const pusher = open({ onResume: (outcome) => outcomes.push(outcome) });
  const channel = await subscribed(pusher, name);
  const seen = record(channel);
  publish(server, name, 1, 3);
  await waitUntil(() => seen.length === 3, "3 live events");
  return { pusher, channel, seen, outcomes };
}

// The tests run concurrently: each has its own server and clients, and most wait for pusher-js's
// reconnect delay (1 s after a lost connection).
describe("resume after a lost connection", { concurrency: true }, () => {
  for (const kind of ["public", "private", "presence"]) {
    test(`${kind}: missed events are replayed once, in order, then ringcast:resume recovered`, TEST, () =>
      withServer({}, async ({ server, open }) => {
        const name = channelOf(kind);
        const { pusher, channel, seen, outcomes } = await caughtUp(server, open, name);
        const { epoch } = server.channel(name);
        assert.deepEqual(resumeState(pusher, name), { epoch, seq: 3, resuming: false });

        const socketId = pusher.connection.socket_id;
        server.dropAll();
        publish(server, name, 4, 6); // while the client is away
        await reconnected(pusher, socketId);
        await waitUntil(() => outcomes.length === 1, "ringcast:resume");
        publish(server, name, 7, 7); // live again
        await waitUntil(() => seen.length === 8, "the replay, ringcast:resume and a live event");
        await sleep(100); // nothing more may come

        const resumed = { channel: name, recovered: true, epoch, seq: 6 };
        assert.deepEqual(seen, [...events(1, 6), [RESUME_EVENT, resumed], ...events(7, 7)]);
        assert.deepEqual(outcomes, [resumed], "onResume is told once");
        const subscribes = server.subscribes(name);
        assert.equal(subscribes.length, 2);
        assert.equal(subscribes[0].resume_after, undefined);
        // The previous socket id rides along: events that excluded it are not replayed.
        assert.deepEqual(subscribes[1].resume_after, { epoch, seq: 3, socket_id: socketId });
        assert.equal(subscribes[1].channel, name);
        assert.deepEqual(resumeState(pusher, name), { epoch, seq: 7, resuming: false });
        if (kind === "presence") {
          assert.equal(channel.members.count, 1);
          assert.equal(channel.members.me.id, "u1");
        }
      }),
    );
  }

  test("a changed epoch: nothing is replayed, the app is told recovered:false, tracking restarts", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "private-room";
      const { pusher, seen, outcomes } = await caughtUp(server, open, name);
      const old = server.channel(name).epoch;
      const socketId = pusher.connection.socket_id;
      server.dropAll();
      const epoch = server.newEpoch(name); // the server lost the channel's history
      publish(server, name, 100, 101); // seq 1 and 2 of the new epoch
      await reconnected(pusher, socketId);
      await waitUntil(() => outcomes.length === 1, "ringcast:resume");
      publish(server, name, 102, 102);
      await waitUntil(() => seen.length === 5, "ringcast:resume and a live event");
      await sleep(100);

      const outcome = { channel: name, recovered: false, epoch, seq: 2 };
      assert.deepEqual(seen, [...events(1, 3), [RESUME_EVENT, outcome], ...events(102, 102)]);
      assert.deepEqual(outcomes, [outcome]);
      assert.deepEqual(server.subscribes(name)[1].resume_after, {
        epoch: old,
        seq: 3,
        socket_id: socketId,
      });
      assert.deepEqual(resumeState(pusher, name), { epoch, seq: 3, resuming: false });
    }),
  );

  test("missed events no longer retained: nothing is replayed, recovered:false, same epoch", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "room";
      const { pusher, seen, outcomes } = await caughtUp(server, open, name);
      const { epoch } = server.channel(name);
      const socketId = pusher.connection.socket_id;
      server.dropAll();
      publish(server, name, 4, 10);
      server.retainOnly(name, 3); // seq 4 (the first missed) is gone
      await reconnected(pusher, socketId);
      await waitUntil(() => outcomes.length === 1, "ringcast:resume");
      await sleep(100);

      const outcome = { channel: name, recovered: false, epoch, seq: 10 };
      assert.deepEqual(seen, [...events(1, 3), [RESUME_EVENT, outcome]], "never a partial replay");
      assert.deepEqual(resumeState(pusher, name), { epoch, seq: 10, resuming: false });
    }),
  );

  for (const [replayed, kind] of [[2, "presence"], [0, "public"]]) {
    test(`${kind}: a connection lost after ${replayed} replayed events: the next resume continues after the last received`, TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = channelOf(kind);
      const { pusher, seen, outcomes } = await caughtUp(server, open, name);
      const { epoch } = server.channel(name);
      const first = pusher.connection.socket_id;
      server.dropAll();
      publish(server, name, 4, 9);
      server.dropDuringNextReplay(name, replayed); // replays 4.., then the connection is cut
      await reconnected(pusher, first);
      const second = pusher.connection.socket_id;
      await reconnected(pusher, second);
      await waitUntil(() => outcomes.length === 1, "ringcast:resume");
      await sleep(100);

      const resumed = { channel: name, recovered: true, epoch, seq: 9 };
      assert.deepEqual(seen, [...events(1, 9), [RESUME_EVENT, resumed]], "every event once, in order");
      assert.deepEqual(outcomes, [resumed]);
      assert.deepEqual(
        server.subscribes(name).map((s) => s.resume_after),
        [
          undefined,
          { epoch, seq: 3, socket_id: first },
          { epoch, seq: 3 + replayed, socket_id: first },
        ],
      );
      assert.deepEqual(resumeState(pusher, name), { epoch, seq: 9, resuming: false });
    }),
    );
  }

  test("a drain close (4200): pusher-js reconnects at once and the channel resumes", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "private-room";
      const { pusher, seen, outcomes } = await caughtUp(server, open, name);
      const { epoch } = server.channel(name);
      const socketId = pusher.connection.socket_id;
      server.dropAll({ code: 4200 });
      publish(server, name, 4, 5);
      await reconnected(pusher, socketId);
      await waitUntil(() => outcomes.length === 1, "ringcast:resume");
      await sleep(100);
      const resumed = { channel: name, recovered: true, epoch, seq: 5 };
      assert.deepEqual(seen, [...events(1, 5), [RESUME_EVENT, resumed]]);
    }),
  );

  test("each channel resumes from its own position", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const pusher = open();
      const a = await subscribed(pusher, "room-a");
      const b = await subscribed(pusher, "private-room-b");
      const seenA = record(a);
      const seenB = record(b);
      publish(server, "room-a", 1, 4);
      publish(server, "private-room-b", 1, 1);
      await waitUntil(() => seenA.length === 4 && seenB.length === 1, "live events");
      const socketId = pusher.connection.socket_id;
      server.dropAll();
      publish(server, "room-a", 5, 5);
      publish(server, "private-room-b", 2, 3);
      await reconnected(pusher, socketId);
      await waitUntil(() => seenA.length === 6 && seenB.length === 4, "replays and ringcast:resume");
      assert.equal(server.subscribes("room-a")[1].resume_after.seq, 4);
      assert.equal(server.subscribes("private-room-b")[1].resume_after.seq, 1);
      assert.deepEqual(seenA.slice(4, 5), events(5, 5));
      assert.deepEqual(seenB.slice(1, 3), events(2, 3));
    }),
  );

  test("private-encrypted: ringcast:resume reaches channel.bind and onResume", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const name = "private-encrypted-room";
      const outcomes = [];
      const pusher = open({ onResume: (outcome) => outcomes.push(outcome) });
      const channel = await subscribed(pusher, name);
      const { epoch, seq } = server.channel(name);
      assert.deepEqual(resumeState(pusher, name), { epoch, seq, resuming: false });
      const resumed = [];
      channel.bind(RESUME_EVENT, (data) => resumed.push(data));
      const socketId = pusher.connection.socket_id;
      server.dropAll();
      await reconnected(pusher, socketId);
      await waitUntil(() => resumed.length === 1, "ringcast:resume on the channel");
      await sleep(100);
      const outcome = { channel: name, recovered: true, epoch, seq };
      assert.deepEqual(resumed, [outcome]);
      assert.deepEqual(outcomes, [outcome]);
    }),
  );

  test("ringcast:resume also reaches the client's global bindings on a plain channel", TEST, () =>
    withServer({}, async ({ server, open }) => {
      const pusher = open();
      await subscribed(pusher, "room");
      const socketId = pusher.connection.socket_id;
      const global = waitFor(pusher, RESUME_EVENT, 5_000);
      server.dropAll();
      await reconnected(pusher, socketId);
      assert.equal((await global).recovered, true);
    }),
  );
});
