// The package itself: the CommonJS entry is generated from index.mjs and up to date, both entries
// export the same API, and withResume refuses what is not a pusher-js client.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import * as esm from "../index.mjs";
import { Pusher } from "./helpers.mjs";
import { cjsSource, paths } from "../scripts/build-cjs.mjs";

const require = createRequire(import.meta.url);

test("index.cjs is index.mjs as built by `npm run build`", () => {
  const expected = cjsSource(readFileSync(paths.esm, "utf8"));
  assert.ok(readFileSync(paths.cjs, "utf8") === expected, "index.cjs is stale: run `npm run build` in clients/js");
});

test("require() and import give the same API", () => {
  const cjs = require("@ringcast/pusher-resume");
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.deepEqual(Object.keys(esm).sort(), ["RESUME_EVENT", "resumeState", "withResume"]);
  assert.equal(cjs.RESUME_EVENT, "ringcast:resume");
});

test("withResume returns the same client, once, and refuses anything else", () => {
  // Never connects: no server is listening there and the client is disconnected at once.
  const pusher = new Pusher("key", { cluster: "mt1", wsHost: "127.0.0.1", wsPort: 1, forceTLS: false, enabledTransports: ["ws"] });
  try {
    const sendEvent = esm.withResume(pusher).send_event;
    assert.equal(esm.withResume(pusher), pusher);
    assert.equal(pusher.send_event, sendEvent, "a second withResume wraps nothing again");
    assert.throws(() => esm.withResume({}), TypeError);
    assert.throws(() => esm.withResume(undefined), TypeError);
    assert.equal(esm.resumeState(pusher, "room"), undefined);
    assert.equal(esm.resumeState({}, "room"), undefined);
  } finally {
    pusher.disconnect();
  }
});
