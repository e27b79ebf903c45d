// User sign-in with pusher-js (`pusher.signin()`, authenticated in process by the REST library's
// `authenticateUser`), server-to-user events (`sendToUser`), watchlist events and
// `terminateUserConnections`.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  WAIT_MS,
  authorizing,
  channelName,
  coreOf,
  errorCode,
  openSpread,
  record,
  recordConnection,
  reachesState,
  rest,
  signedIn,
  sleep,
  waitUntil,
  withClients,
} from "./helpers.mjs";

/** How long to listen for an event that must not come. */
const QUIET_MS = 500;

/** A user id unique to this run. */
const userId = (name) => channelName(name);

test("signin, sendToUser to every connection of the user, terminateUserConnections", async (t) => {
  const server = rest();
  await withClients(async (open) => {
    const ada = userId("ada");
    const bob = userId("bob");
    const make = () => {
      const identity = {};
      const client = open(undefined, authorizing(server, identity));
      client.identity = identity;
      return client;
    };
    // ada on two connections (on different cores when the kernel spreads them), bob on one.
    const { clients } = await openSpread(make, 3);
    const [ada1, ada2, bob1] = clients;
    t.diagnostic(`cores: ada1 ${coreOf(ada1)}, ada2 ${coreOf(ada2)}, bob ${coreOf(bob1)}`);
    ada1.identity.user = { id: ada, user_info: { name: "Ada" } };
    ada2.identity.user = { id: ada, user_info: { name: "Ada" } };
    bob1.identity.user = { id: bob, user_info: { name: "Bob" }, watchlist: [ada] };

    for (const client of clients) {
      const userData = await signedIn(client);
      assert.equal(userData.id, client.identity.user.id);
    }
    const got = clients.map((client) => record(client.user, "notice"));
    const connections = clients.map((client) => recordConnection(client));

    const response = await server.sendToUser(ada, "notice", { hello: "ada" });
    assert.equal(response.status, 200);
    await waitUntil(() => got[0].length >= 1 && got[1].length >= 1, WAIT_MS, "the notice on both of ada's connections");
    assert.deepEqual(got[0], [{ hello: "ada" }]);
    assert.deepEqual(got[1], [{ hello: "ada" }]);

    await server.sendToUser(bob, "notice", { hello: "bob" });
    await waitUntil(() => got[2].length >= 1, WAIT_MS, "the notice at bob");
    await sleep(QUIET_MS);
    assert.deepEqual(got[2], [{ hello: "bob" }], "bob got ada's notice?");
    assert.deepEqual(got[0], [{ hello: "ada" }], "ada got bob's notice?");
    assert.deepEqual(got[1], [{ hello: "ada" }], "ada got bob's notice?");

    // Terminating ada closes both her connections with 4009 (pusher-js does not reconnect).
    const terminated = await server.terminateUserConnections(ada);
    assert.equal(terminated.status, 200);
    await Promise.all([reachesState(ada1), reachesState(ada2)]);
    for (const [i, name] of [[0, "ada1"], [1, "ada2"]]) {
      const codes = connections[i].errors.map(errorCode);
      assert.ok(codes.includes(4009), `${name} errors ${JSON.stringify(connections[i].errors)}`);
      assert.ok(!connections[i].states.includes("connecting"), `${name} reconnected: ${connections[i].states}`);
    }

    // bob is untouched: still connected, still reachable.
    await sleep(QUIET_MS);
    assert.equal(bob1.connection.state, "connected");
    assert.deepEqual(connections[2].errors, []);
    await server.sendToUser(bob, "notice", { again: true });
    await waitUntil(() => got[2].length >= 2, WAIT_MS, "a notice at bob after ada's termination");
    assert.deepEqual(got[2][1], { again: true });
    assert.ok(!ada1.connection.state.startsWith("connect"), `ada1 came back: ${ada1.connection.state}`);
  });
});

test("watchlist: a watcher hears online when the user signs in and offline when terminated", async () => {
  const server = rest();
  await withClients(async (open) => {
    const watched = userId("watched");
    const watcher = open(undefined, authorizing(server, { user: { id: userId("watcher"), watchlist: [watched] } }));
    const events = [];
    for (const name of ["online", "offline"]) {
      watcher.user.watchlist.bind(name, (event) => events.push([name, event.user_ids]));
    }
    await signedIn(watcher);
    const initial = events.length;

    const target = open(undefined, authorizing(server, { user: { id: watched } }));
    await signedIn(target);
    await waitUntil(() => events.length > initial, WAIT_MS, "the watchlist online event");
    assert.deepEqual(events.slice(initial), [["online", [watched]]]);

    await server.terminateUserConnections(watched);
    await reachesState(target);
    await waitUntil(() => events.length > initial + 1, WAIT_MS, "the watchlist offline event");
    assert.deepEqual(events.slice(initial), [
      ["online", [watched]],
      ["offline", [watched]],
    ]);
    assert.equal(watcher.connection.state, "connected");
  });
});
