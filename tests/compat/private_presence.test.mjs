// Private and presence channels with pusher-js, authorized in process by the REST library's
// `authorizeChannel` (what an app's auth endpoint returns), plus the REST views of presence.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  WAIT_MS,
  authorizing,
  config,
  channelName,
  connected,
  coreOf,
  nextEvent,
  okJson,
  openSpread,
  record,
  recordMessages,
  rest,
  sleep,
  subscribed,
  subscriptionError,
  waitUntil,
  withClients,
} from "./helpers.mjs";

/** How long to listen for an event that must not come. */
const QUIET_MS = 500;

test("a private channel authorized with authorizeChannel is joined and receives events", async () => {
  const server = rest();
  await withClients(async (open) => {
    const client = open(undefined, authorizing(server));
    await connected(client);
    const name = channelName("private-ok");
    const channel = await subscribed(client, name);
    assert.equal(channel.subscribed, true);
    const received = nextEvent(channel, "secret");
    const response = await server.trigger(name, "secret", { n: 1 });
    assert.equal(response.status, 200);
    assert.deepEqual(await received, { n: 1 });
  });
});

test("a forged private-channel signature gets pusher:subscription_error; the connection stays usable", async () => {
  const server = rest();
  const forger = rest({ secret: "not-the-app-secret" });
  await withClients(async (open) => {
    const identity = {};
    const client = open(undefined, authorizing(server, identity));
    await connected(client);

    // Signed with the wrong secret: a well-formed `key:hex` the broker must reject.
    identity.auth = (socketId, channel) => forger.authorizeChannel(socketId, channel);
    const forged = channelName("private-forged");
    const error = await subscriptionError(client, forged);
    // pusher-js only adds `status` for HTTP auth failures of its own; the handler succeeded, so
    // this error is the broker's.
    assert.equal(error?.type, "AuthError", JSON.stringify(error));
    assert.equal(error?.status, 401, JSON.stringify(error));
    assert.equal(client.channel(forged).subscribed, false);

    // A signature of the right length made of zeros, and a key that is not the app's.
    identity.auth = () => ({ auth: `${config.key}:${"0".repeat(64)}` });
    const zeros = channelName("private-zeros");
    assert.equal((await subscriptionError(client, zeros))?.status, 401);
    identity.auth = (socketId, channel) => ({
      auth: `other-key:${server.authorizeChannel(socketId, channel).auth.split(":")[1]}`,
    });
    const wrongKey = channelName("private-wrong-key");
    assert.equal((await subscriptionError(client, wrongKey))?.status, 401);

    // Not joined: a trigger on the forged channel does not reach the client.
    const leaked = record(client.channel(forged), "leak");
    await server.trigger(forged, "leak", { n: 1 });

    // The connection is still open and a correctly signed subscription works.
    delete identity.auth;
    assert.equal(client.connection.state, "connected");
    const good = channelName("private-after-forged");
    const channel = await subscribed(client, good);
    const received = nextEvent(channel, "fine");
    await server.trigger(good, "fine", { ok: true });
    assert.deepEqual(await received, { ok: true });
    await sleep(QUIET_MS);
    assert.deepEqual(leaked, [], "an event on a channel whose subscription failed was delivered");
  });
});

test("presence: join, member info, member_added/removed, several tabs of one user are one member", async (t) => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("presence-room");
    const make = () => {
      const identity = {};
      const client = open(undefined, authorizing(server, identity));
      client.identity = identity;
      return client;
    };
    // Alternating cores (when the kernel spreads them): ada's two tabs on different cores, the
    // observer on the other core from ada's first tab, so membership is merged and announced
    // across cores.
    const { clients, spread } = await openSpread(make, 4);
    const [ada1, ada2, bob, observer] = clients;
    t.diagnostic(
      `cores: ada1 ${coreOf(ada1)}, ada2 ${coreOf(ada2)}, bob ${coreOf(bob)}, observer ${coreOf(observer)}` +
        (spread ? "" : " (the kernel put every connection on one core)"),
    );
    observer.identity.presence = { user_id: "obs", user_info: { name: "Observer" } };
    ada1.identity.presence = { user_id: "ada", user_info: { name: "Ada", tab: 1 } };
    ada2.identity.presence = { user_id: "ada", user_info: { name: "Ada", tab: 1 } };
    bob.identity.presence = { user_id: "bob", user_info: { name: "Bob" } };

    // What the server sends the observer, before pusher-js de-duplicates anything.
    const raw = recordMessages(
      observer,
      (m) => m.channel === name && m.event.startsWith("pusher_internal:member_"),
    );
    const memberEvents = (event) => raw.filter((m) => m.event === `pusher_internal:${event}`).map((m) => m.data.user_id);

    const obsChannel = await subscribed(observer, name);
    assert.equal(obsChannel.members.count, 1);
    assert.deepEqual(obsChannel.members.me, { id: "obs", info: { name: "Observer" } });
    const added = record(obsChannel, "pusher:member_added");
    const removed = record(obsChannel, "pusher:member_removed");

    // ada joins: the observer is told, ada sees both members with their info.
    const adaChannel = await subscribed(ada1, name);
    assert.equal(adaChannel.members.count, 2);
    assert.deepEqual(adaChannel.members.me, { id: "ada", info: { name: "Ada", tab: 1 } });
    assert.deepEqual(adaChannel.members.get("obs"), { id: "obs", info: { name: "Observer" } });
    await waitUntil(() => added.length >= 1, WAIT_MS, "member_added for ada at the observer");
    assert.deepEqual(added, [{ id: "ada", info: { name: "Ada", tab: 1 } }]);
    assert.equal(obsChannel.members.count, 2);

    // bob joins: both earlier members are told.
    const adaAdded = record(adaChannel, "pusher:member_added");
    const bobChannel = await subscribed(bob, name);
    assert.equal(bobChannel.members.count, 3);
    const ids = [];
    bobChannel.members.each((member) => ids.push(member.id));
    assert.deepEqual(ids.sort(), ["ada", "bob", "obs"]);
    await waitUntil(() => added.length >= 2 && adaAdded.length >= 1, WAIT_MS, "member_added for bob");
    assert.deepEqual(added[1], { id: "bob", info: { name: "Bob" } });
    assert.deepEqual(adaAdded, [{ id: "bob", info: { name: "Bob" } }]);

    // ada's second tab: still 3 members, and nobody hears member_added.
    const ada2Channel = await subscribed(ada2, name);
    assert.equal(ada2Channel.members.count, 3);
    assert.deepEqual(ada2Channel.members.me, { id: "ada", info: { name: "Ada", tab: 1 } });
    await sleep(QUIET_MS);
    assert.deepEqual(memberEvents("member_added"), ["ada", "bob"], "member_added sent for a second tab");
    assert.equal(obsChannel.members.count, 3);

    // ada closes one tab: she is still there.
    ada1.disconnect();
    await sleep(QUIET_MS);
    assert.deepEqual(memberEvents("member_removed"), [], "member_removed while ada still has a tab open");
    assert.equal(obsChannel.members.count, 3);

    // ... and the other: now she is gone, once.
    ada2.disconnect();
    await waitUntil(() => removed.length >= 1, WAIT_MS, "member_removed for ada");
    assert.deepEqual(removed, [{ id: "ada", info: { name: "Ada", tab: 1 } }]);
    assert.equal(obsChannel.members.count, 2);

    // bob unsubscribes (without disconnecting): member_removed too.
    bob.unsubscribe(name);
    await waitUntil(() => removed.length >= 2, WAIT_MS, "member_removed for bob");
    assert.deepEqual(removed[1], { id: "bob", info: { name: "Bob" } });
    assert.equal(obsChannel.members.count, 1);
    await sleep(QUIET_MS);
    assert.deepEqual(memberEvents("member_added"), ["ada", "bob"]);
    assert.deepEqual(memberEvents("member_removed"), ["ada", "bob"], "duplicate member_removed");
  });
});

test("presence: a numeric user_id (as Laravel sends) is a member with a string id", async () => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("presence-numeric");
    const first = open(undefined, authorizing(server, { presence: { user_id: "a", user_info: null } }));
    const numeric = open(undefined, authorizing(server, { presence: { user_id: 42, user_info: { n: 42 } } }));
    await Promise.all([connected(first), connected(numeric)]);
    const channel = await subscribed(first, name);
    const added = nextEvent(channel, "pusher:member_added");
    const numericChannel = await subscribed(numeric, name);
    assert.deepEqual(await added, { id: "42", info: { n: 42 } });
    assert.equal(numericChannel.members.count, 2);
    assert.deepEqual(numericChannel.members.get("42"), { id: "42", info: { n: 42 } });
    const users = await okJson(server.get({ path: `/channels/${name}/users` }), "GET users");
    assert.deepEqual(users.users.map((u) => u.id).sort(), ["42", "a"]);
  });
});

test("REST: GET /channels/NAME/users lists members once; trigger with info returns the counts", async () => {
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("presence-rest");
    const publicName = channelName("rest-info-public");
    const people = [
      ["u1", { name: "One" }],
      ["u2", { name: "Two" }],
      ["u2", { name: "Two" }], // a second tab of u2
      ["u3", { name: "Three" }],
    ];
    const clients = people.map(([user_id, user_info]) =>
      open(undefined, authorizing(server, { presence: { user_id, user_info } })),
    );
    await Promise.all(clients.map((c) => connected(c)));
    const channels = [];
    for (const client of clients) channels.push(await subscribed(client, name));
    await Promise.all(clients.slice(0, 2).map((c) => subscribed(c, publicName)));

    const users = await okJson(server.get({ path: `/channels/${name}/users` }), "GET users");
    assert.ok(Array.isArray(users.users), JSON.stringify(users));
    assert.deepEqual(
      users.users.map((u) => u.id).sort(),
      ["u1", "u2", "u3"],
      `users of ${name}: ${JSON.stringify(users)}`,
    );

    const info = await okJson(
      server.get({ path: `/channels/${name}`, params: { info: "user_count" } }),
      "GET channel",
    );
    assert.equal(info.occupied, true, JSON.stringify(info));
    assert.equal(info.user_count, 3, JSON.stringify(info));

    const listing = await okJson(
      server.get({ path: "/channels", params: { filter_by_prefix: "presence-rest-", info: "user_count" } }),
      "GET channels",
    );
    assert.deepEqual(listing.channels[name], { user_count: 3 }, JSON.stringify(listing));
    assert.ok(!(publicName in listing.channels), JSON.stringify(listing));

    const delivered = channels.map((channel) => record(channel, "counted"));
    const triggered = await okJson(
      server.trigger(name, "counted", { n: 1 }, { info: "user_count,subscription_count" }),
      "trigger with info",
    );
    assert.deepEqual(
      triggered,
      { channels: { [name]: { user_count: 3, subscription_count: 4 } } },
      "trigger info on a presence channel: 3 users, 4 connections",
    );
    const publicTriggered = await okJson(
      server.trigger(publicName, "counted", { n: 2 }, { info: "subscription_count" }),
      "trigger with info",
    );
    assert.deepEqual(publicTriggered, { channels: { [publicName]: { subscription_count: 2 } } });
    await waitUntil(() => delivered.every((d) => d.length >= 1), WAIT_MS, "the counted event on every tab");
    assert.deepEqual(delivered, channels.map(() => [{ n: 1 }]));
  });
});

test("presence: a repeated pusher:subscribe is confirmed with the member list, counted once", async () => {
  // pusher-js 8 does not repeat a subscribe by itself on one connection: `subscribe()` on a
  // subscribed or pending channel sends nothing, and `unsubscribe()` then `subscribe()` sends
  // pusher:unsubscribe in between (checked first). Other clients do repeat it, and so can an app
  // through pusher-js's public `send_event`; pusher-js then handles the second confirmation like
  // the first (Members.onSubscription reads `data.presence.hash`, and threw on `"data":"{}"`).
  const server = rest();
  await withClients(async (open) => {
    const name = channelName("presence-again");
    const ada = open(undefined, authorizing(server, { presence: { user_id: "ada", user_info: { name: "Ada" } } }));
    const bob = open(undefined, authorizing(server, { presence: { user_id: "bob", user_info: { name: "Bob" } } }));
    await Promise.all([connected(ada), connected(bob)]);
    const sent = [];
    const send = ada.send_event.bind(ada);
    ada.send_event = (event, data, channel) => {
      if (event.startsWith("pusher:") && data?.channel === name) sent.push(event);
      return send(event, data, channel);
    };

    const bobChannel = await subscribed(bob, name);
    // What bob hears about members, before pusher-js de-duplicates anything.
    const bobMembers = recordMessages(bob, (m) => m.channel === name && m.event.startsWith("pusher_internal:member_"));
    const memberEvents = () => bobMembers.map((m) => `${m.event.slice("pusher_internal:".length)} ${m.data.user_id}`);
    let adaChannel = await subscribed(ada, name);
    assert.equal(adaChannel.members.count, 2);
    ada.subscribe(name);
    ada.unsubscribe(name);
    adaChannel = await subscribed(ada, name);
    assert.deepEqual(sent, ["pusher:subscribe", "pusher:unsubscribe", "pusher:subscribe"]);
    assert.equal(adaChannel.members.count, 2);

    const confirmations = record(adaChannel, "pusher:subscription_succeeded");
    const { auth, channel_data } = server.authorizeChannel(ada.connection.socket_id, name, {
      user_id: "ada",
      user_info: { name: "Ada" },
    });
    ada.send_event("pusher:subscribe", { auth, channel_data, channel: name });
    await waitUntil(() => confirmations.length >= 1, WAIT_MS, "the second subscription_succeeded");
    assert.equal(adaChannel.members.count, 2);
    assert.deepEqual(adaChannel.members.me, { id: "ada", info: { name: "Ada" } });
    assert.deepEqual(adaChannel.members.get("bob"), { id: "bob", info: { name: "Bob" } });

    // Counted once: no member_added at bob for the repeat (a REST event sent afterwards
    // arrives behind anything the repeat caused), and REST sees two connections of two users.
    const marker = nextEvent(bobChannel, "marker");
    await server.trigger(name, "marker", { n: 1 });
    await marker;
    assert.deepEqual(
      memberEvents(),
      ["member_added ada", "member_removed ada", "member_added ada"],
      "the join, the unsubscribe and the new subscribe, and nothing for the repeat",
    );
    assert.equal(bobChannel.members.count, 2);
    const info = await okJson(
      server.get({ path: `/channels/${name}`, params: { info: "user_count,subscription_count" } }),
      "GET channel",
    );
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 2 });

    // One unsubscribe leaves: bob sees ada go.
    const removed = nextEvent(bobChannel, "pusher:member_removed");
    ada.unsubscribe(name);
    assert.deepEqual(await removed, { id: "ada", info: { name: "Ada" } });
    assert.equal(bobChannel.members.count, 1);
  });
});
