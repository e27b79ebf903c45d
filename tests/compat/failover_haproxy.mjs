// The hot-standby failover seen by real clients through HAProxy: pusher-js 8.6.0 with the resume
// plugin (`clients/js`, `@ringcast/pusher-resume`) subscribed through the load balancer, and the
// `pusher` REST library publishing through it, while the primary is killed and the standby
// promoted. Not a `*.test.mjs` file: it is one scenario driven by `tests/it/haproxy.rs`
// (`failover_through_haproxy_with_pusher_js_and_the_resume_plugin`), which owns the two brokers,
// HAProxy, the kill and the promotion. This script only observes and reports; the driver checks.
//
// 1. One pusher-js client (`withResume`) connects through HAProxy (`RINGCAST_HOST`,
//    `RINGCAST_PORT` name HAProxy's frontend), subscribes to a fresh public channel, and the REST
//    library publishes events 1..BEFORE there one at a time (each must be answered 200) and waits
//    until the client got them. Then it prints `failover: publishing {channel}` and keeps
//    publishing the next events one at a time, PACE_MS apart, remembering which were answered 200
//    and which failed (HAProxy answers 502/503 while no node is ready).
// 2. The driver kills the primary (SIGKILL) and promotes the standby; HAProxy moves to it once its
//    `/readyz` says 200. pusher-js notices the dead connection and reconnects through HAProxy by
//    itself; the plugin re-subscribes with `resume_after` and the broker answers with what the
//    client missed and `ringcast:resume`.
// 3. Once AFTER publishes in a row were answered 200 after the last failure, it stops publishing,
//    waits until the client has every acknowledged event and a `ringcast:resume`, and prints
//    `failover: ok {...}` (every event the client got with the plugin's position after it, the
//    acknowledged and failed publishes, the resume outcomes, the socket ids, timestamps), then
//    exits 0; or `failover: failed MESSAGE` (details on stderr) and exits 1.
//
// Every wait is bounded. Environment: as the rest of this directory (see helpers.mjs); run it
// through `cargo test --test it failover`.

import PusherClient from "pusher-js";
import { resumeState, withResume } from "../../clients/js/index.mjs";
import { channelName, config, connected, rest, sleep, waitUntil } from "./helpers.mjs";

const PREFIX = "failover:";
/** Publishes before the driver is told to kill the primary; every one must be acknowledged. */
const BEFORE = 20;
/** Acknowledged publishes in a row after the last failure that end the run. */
const AFTER = 20;
/** The pause between two publishes. */
const PACE_MS = 10;
/** How long the failover (kill, promotion, HAProxy's checks, the reconnect) may take. */
const FAILOVER_WAIT_MS = 20_000;
const WAIT_MS = 10_000;
/** One publish; a node that died mid-request is noticed at once, this only bounds a hang. */
const PUBLISH_TIMEOUT_MS = 3_000;

const channel = channelName("failover");
const server = rest({ timeout: PUBLISH_TIMEOUT_MS });

function say(kind, payload) {
  process.stdout.write(`${PREFIX} ${kind} ${typeof payload === "string" ? payload : JSON.stringify(payload)}\n`);
}

/** What the driver gets back, and what is printed on failure. */
const report = {
  channel,
  /** `[n, seq]` for each event `e` the client got, in order (`seq`: the plugin's position after it). */
  events: [],
  /** Every event name the channel emitted, in order. */
  timeline: [],
  acked: [],
  /** `[n, unix ms, status or error]`. */
  failed: [],
  /** The unix ms of each acknowledgement, by n. */
  ackedAtMs: {},
  outcomes: [],
  socketIds: [],
  /** `[unix ms, state]` of each pusher-js connection state change. */
  states: [],
  position: null,
};

/** Publishes event `n`; true when it was answered 200. */
async function publish(n) {
  try {
    const response = await server.trigger(channel, "e", { n });
    if (response.status === 200) {
      report.acked.push(n);
      report.ackedAtMs[n] = Date.now();
      return true;
    }
    report.failed.push([n, Date.now(), response.status]);
  } catch (error) {
    report.failed.push([n, Date.now(), error?.status ?? String(error?.message ?? error)]);
  }
  return false;
}

const received = (n) => report.events.some(([m]) => m === n);

async function main() {
  const pusher = new PusherClient(config.key, {
    cluster: "mt1",
    wsHost: config.host,
    wsPort: config.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
  });
  withResume(pusher, { onResume: (outcome) => report.outcomes.push(outcome) });
  pusher.connection.bind("connected", ({ socket_id }) => report.socketIds.push(socket_id));
  pusher.connection.bind("state_change", ({ current }) => report.states.push([Date.now(), current]));
  await connected(pusher);
  const subscription = pusher.subscribe(channel);
  subscription.bind_global((event, data) => {
    report.timeline.push(event);
    if (event === "e") report.events.push([data.n, resumeState(pusher, channel)?.seq ?? null]);
  });
  await waitUntil(
    () => report.timeline.includes("pusher:subscription_succeeded"),
    WAIT_MS,
    `pusher:subscription_succeeded on ${channel}`,
  );

  // ---- Before the failover: the primary answers every publish ----
  for (let n = 1; n <= BEFORE; n += 1) {
    if (!(await publish(n))) throw new Error(`publish ${n} before the failover was not acknowledged`);
  }
  await waitUntil(() => received(BEFORE), WAIT_MS, `events 1..${BEFORE} before the failover`);
  say("publishing", { channel });

  // ---- Across the failover ----
  const deadline = Date.now() + FAILOVER_WAIT_MS;
  let n = BEFORE;
  let inARow = 0;
  while (report.failed.length === 0 || inARow < AFTER) {
    if (Date.now() > deadline) {
      throw new Error(
        report.failed.length === 0
          ? `no publish failed within ${FAILOVER_WAIT_MS} ms: was the primary killed?`
          : `publishes did not recover within ${FAILOVER_WAIT_MS} ms`,
      );
    }
    n += 1;
    inARow = (await publish(n)) ? inARow + 1 : 0;
    await sleep(PACE_MS);
  }
  await waitUntil(
    () => report.outcomes.length > 0 && report.acked.every(received),
    FAILOVER_WAIT_MS,
    "a ringcast:resume and every acknowledged event on the client",
  );
  report.position = resumeState(pusher, channel);
  pusher.disconnect();
}

main().then(
  () => {
    say("ok", report);
    process.exit(0);
  },
  (error) => {
    say("failed", String(error?.stack ?? error).replaceAll("\n", " | "));
    process.stderr.write(`${JSON.stringify(report)}\n`);
    process.exit(1);
  },
);
