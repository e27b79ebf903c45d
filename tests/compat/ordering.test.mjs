// Many pusher-js clients spread over the broker's cores, one publisher: every client receives
// every event exactly once, in the order the publisher sent them.

import { test } from "node:test";
import assert from "node:assert/strict";

import { channelName, connected, record, rest, subscribed, waitUntil, withClients } from "./helpers.mjs";

const CLIENTS = 8;
const EVENTS = 200;

test(`${CLIENTS} clients receive ${EVENTS} sequential triggers in order, once each`, async (t) => {
  const pusher = rest();
  await withClients(async (open) => {
    const name = channelName("ordered");
    const clients = Array.from({ length: CLIENTS }, () => open());
    await Promise.all(clients.map((c) => connected(c)));
    const ids = new Set(clients.map((c) => c.connection.socket_id));
    assert.equal(ids.size, CLIENTS, "socket ids are not unique");
    // Informational only: ringcast currently puts the core number in the low bits of the id's
    // second part; the kernel spreads connections over cores, so this is not asserted.
    const lows = [...ids].map((id) => BigInt(id.split(".")[1]) % 2n);
    t.diagnostic(`socket ids by low bit: ${lows.filter((b) => b === 0n).length} even, ${lows.filter((b) => b === 1n).length} odd`);
    const channels = await Promise.all(clients.map((c) => subscribed(c, name)));
    const received = channels.map((channel) => record(channel, "tick"));

    for (let seq = 0; seq < EVENTS; seq++) {
      const response = await pusher.trigger(name, "tick", { seq });
      assert.equal(response.status, 200);
    }

    try {
      await waitUntil(() => received.every((r) => r.length >= EVENTS), 30_000, `${EVENTS} events on every client`);
    } finally {
      // Name the first client whose sequence is off, whether short, duplicated or reordered,
      // without dumping 200-element arrays.
      for (const [i, r] of received.entries()) {
        const problem = sequenceProblem(r.map((d) => d.seq), EVENTS);
        assert.equal(problem, null, `client ${i} (socket ${clients[i].connection.socket_id}): ${problem}`);
      }
    }
  });
});

/** null when `seqs` is exactly 0..n-1, otherwise what is wrong with it. */
function sequenceProblem(seqs, n) {
  const seen = new Set();
  const duplicates = seqs.filter((s) => (seen.has(s) ? true : (seen.add(s), false)));
  const missing = [];
  for (let s = 0; s < n; s++) if (!seen.has(s)) missing.push(s);
  const firstOutOfOrder = seqs.findIndex((s, i) => i > 0 && s <= seqs[i - 1]);
  if (seqs.length === n && duplicates.length === 0 && missing.length === 0 && firstOutOfOrder < 0) return null;
  const sample = (list) => `${list.slice(0, 10).join(",")}${list.length > 10 ? ",..." : ""}`;
  return (
    `received ${seqs.length} of ${n}; missing [${sample(missing)}]; duplicated [${sample(duplicates)}]; ` +
    (firstOutOfOrder < 0
      ? "in order"
      : `out of order at position ${firstOutOfOrder}: ${seqs[firstOutOfOrder - 1]} then ${seqs[firstOutOfOrder]}`)
  );
}
