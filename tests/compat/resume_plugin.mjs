// The pusher-js resume plugin (`clients/js`, `@ringcast/pusher-resume`) with real pusher-js 8.6.0
// and the `pusher` REST library against the real broker, across a SIGKILL and restart of the
// broker. Not a `*.test.mjs` file: it is one scenario driven by `tests/it/compat.rs`
// (`pusher_js_resume_plugin_against_the_binary`), which owns the broker's lifecycle:
//
// 1. Here: two pusher-js clients wrapped with `withResume`, "alice" on a public, a presence, a
//    `private-encrypted-` and a second public channel ("lossy"), "bob" on the presence channel.
//    The REST library publishes events 1..3 to the first three and event 1 to the lossy one;
//    the clients receive them. Then this script prints `resume-plugin: ready {channels, publish}`
//    and waits.
// 2. The driver stops this process (SIGSTOP, so pusher-js cannot reconnect early: the events
//    below are certainly missed), SIGKILLs the broker, restarts it on the same port and data
//    directory, publishes what `publish` lists, each `data` text as it is (events 4..6 to the
//    public, presence and encrypted channels, the encrypted ones already encrypted here by the
//    REST library; 2..11 to the lossy one: more than the broker's `events_per_channel_max = 8`
//    keeps), and continues this process (SIGCONT).
// 3. Here: pusher-js notices the dead connection and reconnects by itself; the plugin re-subscribes
//    with `resume_after`. As soon as alice is connected again, events 7..9 are published (racing
//    the re-subscribes: each may be replayed or arrive live, both are right); once every channel
//    has had its `ringcast:resume`, events 10..12 (and 12 on the lossy channel) are published live.
//    Then every check below runs, and the script prints `resume-plugin: ok {positions, replayed}`
//    (the plugin's final `{epoch, seq}` per channel, which the driver compares with the REST
//    history, and which events each client got through a replay) and exits 0, or prints
//    `resume-plugin: failed MESSAGE` (details on stderr) and exits 1.
//
// Every wait is bounded; which path an event takes (replayed or live) never decides the outcome.
//
// Environment: as the rest of this directory (`RINGCAST_PORT`, ...; see helpers.mjs), and the
// broker must be driven as above, so run it through `cargo test --test it compat`.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import PusherClient from "pusher-js";
import { resumeState, withResume } from "../../clients/js/index.mjs";
import { authorizing, channelName, config, connected, rest, waitUntil } from "./helpers.mjs";

const PREFIX = "resume-plugin:";
/** How long the driver may take to stop, kill, restart, publish and continue. */
const RESTART_WAIT_MS = 30_000;
const WAIT_MS = 10_000;

const channels = {
  public: channelName("room"),
  presence: channelName("presence-room"),
  encrypted: channelName("private-encrypted-room"),
  lossy: channelName("lossy"),
};
/** The channels that miss a few events and must get them back. */
const recovering = [channels.public, channels.presence, channels.encrypted];
const server = rest({ encryptionMasterKeyBase64: randomBytes(32).toString("base64") });

function say(kind, payload) {
  process.stdout.write(`${PREFIX} ${kind} ${typeof payload === "string" ? payload : JSON.stringify(payload)}\n`);
}

/** A pusher-js client with the plugin, for presence as `userId`, recording its resume outcomes. */
function open(userId) {
  const pusher = new PusherClient(config.key, {
    cluster: "mt1",
    wsHost: config.host,
    wsPort: config.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    ...authorizing(server, { presence: { user_id: userId, user_info: { name: userId } } }),
  });
  const outcomes = [];
  withResume(pusher, { onResume: (outcome) => outcomes.push(outcome) });
  const socketIds = [];
  pusher.connection.bind("connected", ({ socket_id }) => socketIds.push(socket_id));
  return { name: userId, pusher, outcomes, socketIds, timelines: {} };
}

/** Subscribes and records everything the channel emits as `[event, data]`, in order. */
async function subscribe(client, name) {
  const channel = client.pusher.subscribe(name);
  const timeline = [];
  client.timelines[name] = timeline;
  channel.bind_global((event, data) => timeline.push([event, data]));
  await waitUntil(
    () => timeline.some(([event]) => event === "pusher:subscription_succeeded"),
    WAIT_MS,
    `${client.name}: pusher:subscription_succeeded on ${name}`,
  );
  return channel;
}

/** The `n` of each event `e` in a timeline. */
const numbers = (timeline) => timeline.filter(([event]) => event === "e").map(([, data]) => data.n);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const count = (timeline, name) => timeline.filter(([event]) => event === name).length;

const isEncrypted = (name) => name.startsWith("private-encrypted-");

/**
 * Publishes `{n}` as event `e` on `names`, for each n in from..=to, one after the other (the
 * REST library encrypts for an encrypted channel, which it only publishes to alone).
 */
async function publish(names, from, to) {
  const plain = names.filter((name) => !isEncrypted(name));
  for (const n of range(from, to)) {
    const calls = names.filter(isEncrypted).map((name) => [name]);
    if (plain.length > 0) calls.push(plain);
    for (const targets of calls) {
      const response = await server.trigger(targets, "e", { n });
      assert.equal(response.status, 200, `publishing ${n} to ${targets}`);
    }
  }
}

/**
 * What `publish(names, from, to)` would send, for the driver to send while this process is
 * stopped: `[{channels, event, data: [text, ...]}]`, the encrypted channels' data encrypted by
 * the REST library (its request captured instead of sent).
 */
async function prepared(names, from, to) {
  const plain = names.filter((name) => !isEncrypted(name));
  const batches = [];
  if (plain.length > 0) {
    batches.push({ channels: plain, event: "e", data: range(from, to).map((n) => JSON.stringify({ n })) });
  }
  for (const name of names.filter(isEncrypted)) {
    const data = [];
    const capture = Object.create(server);
    capture.post = async ({ body }) => {
      data.push(body.data);
      return { status: 200 };
    };
    for (const n of range(from, to)) await capture.trigger([name], "e", { n });
    batches.push({ channels: [name], event: "e", data });
  }
  return batches;
}

/** Every client opened, for the report on failure. */
const clients = [];

async function main() {
  const alice = open("alice");
  const bob = open("bob");
  clients.push(alice, bob);
  await Promise.all([connected(alice.pusher), connected(bob.pusher)]);

  // ---- Before the crash ----
  const presence = await subscribe(alice, channels.presence);
  await subscribe(bob, channels.presence);
  await subscribe(alice, channels.public);
  await subscribe(alice, channels.encrypted);
  await subscribe(alice, channels.lossy);
  await publish(recovering, 1, 3);
  await publish([channels.lossy], 1, 1);
  await waitUntil(
    () =>
      recovering.every((name) => numbers(alice.timelines[name]).length === 3) &&
      numbers(bob.timelines[channels.presence]).length === 3 &&
      numbers(alice.timelines[channels.lossy]).length === 1,
    WAIT_MS,
    "events 1..3 before the crash",
  );
  const before = {};
  for (const name of Object.values(channels)) {
    before[name] = resumeState(alice.pusher, name);
    assert.ok(before[name], `the plugin tracks ${name} (event_sequence = true on the app)`);
    assert.match(before[name].epoch, /^[0-9a-f]{16}$/, `${name}'s epoch`);
  }
  for (const name of recovering) assert.equal(before[name].seq, 3, `the plugin followed ${name}'s seq`);
  assert.equal(before[channels.lossy].seq, 1, "the plugin followed the lossy channel's seq");
  assert.deepEqual(resumeState(bob.pusher, channels.presence), before[channels.presence]);
  assert.equal(presence.members.count, 2, "alice and bob are members");

  // Published as soon as alice is connected again: races the re-subscribes.
  let racing = null;
  alice.pusher.connection.bind("connected", () => {
    if (racing !== null) return;
    racing = publish(recovering, 7, 9);
    racing.catch(() => {}); // awaited (and so reported) below; never an unhandled rejection
  });

  say("ready", {
    channels,
    publish: [...(await prepared(recovering, 4, 6)), ...(await prepared([channels.lossy], 2, 11))],
  });

  // ---- After the driver restarted the broker ----
  const resumedEverywhere = () =>
    alice.outcomes.length >= 4 && bob.outcomes.length >= 1 && racing !== null;
  await waitUntil(resumedEverywhere, RESTART_WAIT_MS, "a reconnect and ringcast:resume on every channel");
  await racing;
  await waitUntil(
    () =>
      recovering.every((name) => numbers(alice.timelines[name]).length >= 9) &&
      numbers(bob.timelines[channels.presence]).length >= 9,
    WAIT_MS,
    "events 4..9 after the restart",
  );
  await publish(recovering, 10, 12);
  await publish([channels.lossy], 12, 12);
  await waitUntil(
    () =>
      recovering.every((name) => numbers(alice.timelines[name]).length >= 12) &&
      numbers(bob.timelines[channels.presence]).length >= 12 &&
      numbers(alice.timelines[channels.lossy]).length >= 2,
    WAIT_MS,
    "the live events 10..12",
  );

  // ---- Checks ----
  for (const client of clients) {
    assert.equal(client.socketIds.length, 2, `${client.name} connected twice: ${client.socketIds}`);
    assert.notEqual(client.socketIds[0], client.socketIds[1], `${client.name} has a new socket`);
  }
  const replayed = {};
  const checkRecovered = (client, name) => {
    const timeline = client.timelines[name];
    const where = `${client.name} on ${name}: ${JSON.stringify(timeline)}`;
    assert.deepEqual(numbers(timeline), range(1, 12), `every event once, in order: ${where}`);
    assert.equal(count(timeline, "pusher:subscription_succeeded"), 2, `subscribed, then re-subscribed: ${where}`);
    assert.equal(count(timeline, "ringcast:resume"), 1, `one ringcast:resume: ${where}`);
    const resubscribed = timeline.findLastIndex(([event]) => event === "pusher:subscription_succeeded");
    const resumedAt = timeline.findIndex(([event]) => event === "ringcast:resume");
    const resume = timeline[resumedAt][1];
    assert.equal(resume.channel, name, where);
    assert.equal(resume.recovered, true, `the missed events were recovered: ${where}`);
    assert.equal(resume.epoch, before[name].epoch, `the epoch survived the restart: ${where}`);
    assert.ok(resume.seq >= 6 && resume.seq <= 9, `the replay ended at 6..9: ${where}`);
    // 4..6 were certainly missed (published while this process was stopped): replayed between
    // the re-subscribe and ringcast:resume; every event after the resume is past its seq.
    const at = (n) => timeline.findIndex(([event, data]) => event === "e" && data.n === n);
    for (const n of range(4, resume.seq)) {
      assert.ok(resubscribed < at(n) && at(n) < resumedAt, `event ${n} was replayed: ${where}`);
    }
    for (const n of range(resume.seq + 1, 12)) {
      assert.ok(at(n) > resumedAt, `event ${n} arrived live after the resume: ${where}`);
    }
    replayed[`${client.name} on ${name}`] = range(4, resume.seq);
    assert.deepEqual(
      client.outcomes.filter((outcome) => outcome.channel === name),
      [resume],
      `onResume got what channel.bind got: ${where}`,
    );
    assert.deepEqual(resumeState(client.pusher, name), { epoch: before[name].epoch, seq: 12, resuming: false });
  };
  for (const name of recovering) checkRecovered(alice, name);
  checkRecovered(bob, channels.presence);

  // More missed events than the broker keeps: nothing replayed, the app told, live events follow.
  const lossy = alice.timelines[channels.lossy];
  const where = `alice on ${channels.lossy}: ${JSON.stringify(lossy)}`;
  assert.deepEqual(numbers(lossy), [1, 12], `no partial replay: ${where}`);
  const lossyResume = lossy.find(([event]) => event === "ringcast:resume")?.[1];
  assert.deepEqual(
    lossyResume,
    { channel: channels.lossy, recovered: false, epoch: before[channels.lossy].epoch, seq: 11 },
    `ringcast:resume recovered: false: ${where}`,
  );
  assert.deepEqual(
    alice.outcomes.filter((outcome) => outcome.channel === channels.lossy),
    [lossyResume],
    "onResume was told the lossy channel was not recovered",
  );
  assert.ok(
    lossy.findIndex(([event]) => event === "ringcast:resume") < lossy.findIndex(([, data]) => data?.n === 12),
    `the resume came before the live event: ${where}`,
  );
  assert.equal(resumeState(alice.pusher, channels.lossy).seq, 12);

  // Presence across the restart: both members back, reconfirmed without member events.
  for (const client of clients) {
    const channel = client.pusher.channel(channels.presence);
    assert.equal(channel.members.count, 2, `${client.name} sees both members after the restart`);
    assert.equal(channel.members.me.id, client.name);
  }
  const memberEvents = alice.timelines[channels.presence].filter(([event]) => event.startsWith("pusher:member_"));
  assert.deepEqual(memberEvents, [["pusher:member_added", { id: "bob", info: { name: "bob" } }]]);
  assert.deepEqual(bob.timelines[channels.presence].filter(([event]) => event.startsWith("pusher:member_")), []);

  const positions = {};
  for (const name of Object.values(channels)) positions[name] = resumeState(alice.pusher, name);
  for (const client of clients) client.pusher.disconnect();
  return { positions, replayed };
}

main().then(
  (outcome) => {
    say("ok", outcome);
    process.exit(0);
  },
  (error) => {
    say("failed", String(error?.stack ?? error).replaceAll("\n", " | "));
    for (const { name, timelines, outcomes, socketIds } of clients) {
      process.stderr.write(`${name}: sockets ${socketIds}, onResume ${JSON.stringify(outcomes)}\n`);
      for (const [channel, timeline] of Object.entries(timelines)) {
        process.stderr.write(`${name} on ${channel}: ${JSON.stringify(timeline)}\n`);
      }
    }
    process.exit(1);
  },
);
