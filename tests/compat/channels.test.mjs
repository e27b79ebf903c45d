// Channel information over REST (`pusher.get`) while pusher-js clients hold subscriptions.

import { test } from "node:test";
import assert from "node:assert/strict";

import { channelName, connected, rest, subscribed, withClients } from "./helpers.mjs";

async function getJson(pusher, options) {
  const response = await pusher.get(options);
  assert.equal(response.status, 200, `GET ${options.path}`);
  return response.json();
}

test("channel listing and channel info reflect pusher-js subscriptions", async () => {
  const pusher = rest();
  await withClients(async (open) => {
    const busy = channelName("listed-busy");
    const quiet = channelName("listed-quiet");
    const clients = [open(), open(), open()];
    await Promise.all(clients.map((c) => connected(c)));
    await Promise.all([
      subscribed(clients[0], busy),
      subscribed(clients[1], busy),
      subscribed(clients[2], quiet),
    ]);

    const listing = await getJson(pusher, { path: "/channels" });
    assert.equal(typeof listing.channels, "object", JSON.stringify(listing));
    assert.ok(busy in listing.channels, `${busy} missing from ${JSON.stringify(listing)}`);
    assert.ok(quiet in listing.channels, `${quiet} missing from ${JSON.stringify(listing)}`);

    const prefixed = await getJson(pusher, {
      path: "/channels",
      params: { filter_by_prefix: "listed-busy-" },
    });
    assert.ok(busy in prefixed.channels, JSON.stringify(prefixed));
    assert.ok(!(quiet in prefixed.channels), `prefix filter ignored: ${JSON.stringify(prefixed)}`);

    const busyInfo = await getJson(pusher, {
      path: `/channels/${busy}`,
      params: { info: "subscription_count" },
    });
    assert.equal(busyInfo.occupied, true, JSON.stringify(busyInfo));
    assert.equal(busyInfo.subscription_count, 2, JSON.stringify(busyInfo));

    const quietInfo = await getJson(pusher, {
      path: `/channels/${quiet}`,
      params: { info: "subscription_count" },
    });
    assert.equal(quietInfo.occupied, true, JSON.stringify(quietInfo));
    assert.equal(quietInfo.subscription_count, 1, JSON.stringify(quietInfo));

    const empty = await getJson(pusher, { path: `/channels/${channelName("never-used")}` });
    assert.equal(empty.occupied, false, JSON.stringify(empty));
  });
});
