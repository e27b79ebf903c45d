// Generated from index.mjs by scripts/build-cjs.mjs (npm run build): edit index.mjs.
"use strict";
// @ringcast/pusher-resume: channel history resume for pusher-js 8 against ringcast.
//
// With `event_sequence = true`, ringcast puts a top-level `seq` on every channel event frame and
// `epoch` + `seq` on `pusher_internal:subscription_succeeded`, and accepts
// `"resume_after": {"epoch", "seq"}` in a `pusher:subscribe`, answering with the missed events and
// a `ringcast:resume` event (see README.md). pusher-js drops unknown top-level fields when it
// decodes a frame, and builds its subscribe frames itself, so this plugin:
//
// - reads each raw frame text before pusher-js decodes it, by wrapping `emit` on the transport
//   connection of each WebSocket pusher-js opens (`pusher.connection.connection.transport`);
// - adds `resume_after` to the `pusher:subscribe` frames pusher-js sends (by wrapping the
//   instance's `send_event`) for channels whose epoch it knows, which only happens when pusher-js
//   re-subscribes after a reconnect (state is forgotten when the app unsubscribes);
// - forgets a channel when the app unsubscribes (by wrapping the instance's `unsubscribe`).
//
// Against a server that sends no `epoch`, it never holds any state, so it adds nothing to any
// frame and changes nothing.
//
// The CommonJS entry `index.cjs` is generated from this file: `npm run build`.

/** The event ringcast sends on a channel when a resumed subscription has caught up (or could not). */
const RESUME_EVENT = "ringcast:resume";

const SUBSCRIPTION_SUCCEEDED = "pusher_internal:subscription_succeeded";
const ENCRYPTED_PREFIX = "private-encrypted-";

/** pusher instance -> Map(channel name -> { epoch, seq, resuming }) */
const installed = new WeakMap();

/**
 * Adds history resume to a pusher-js 8 client and returns the same client. Call it right after
 * `new Pusher(...)`, before subscribing: `const pusher = withResume(new Pusher(key, options))`.
 *
 * `options.onResume(outcome)` is called with `{ channel, recovered, epoch, seq }` each time a
 * resumed subscription has been answered (after any replayed events); the same object also
 * reaches `channel.bind("ringcast:resume", ...)`.
 *
 * Calling it again on the same client changes nothing.
 */
function withResume(pusher, options = {}) {
  if (
    !pusher ||
    typeof pusher.send_event !== "function" ||
    typeof pusher.unsubscribe !== "function" ||
    typeof pusher.channel !== "function" ||
    !pusher.connection ||
    typeof pusher.connection.bind !== "function"
  ) {
    throw new TypeError("withResume expects a pusher-js 8 client (new Pusher(key, options))");
  }
  if (installed.has(pusher)) return pusher;
  const onResume = options && typeof options.onResume === "function" ? options.onResume : null;
  const channels = new Map();
  installed.set(pusher, channels);

  // ---- Reading raw frames ----

  const hooked = new WeakSet();
  let warned = false;

  // Wraps `emit` of the transport connection of the current WebSocket, so that each raw message
  // is seen before pusher-js decodes (and dispatches) it. Called when pusher-js reports
  // `connected` and again before each subscribe is sent, so every connection is hooked before the
  // server can send it anything about a channel.
  function hookCurrentTransport() {
    const connection = pusher.connection.connection;
    const transport = connection && connection.transport;
    if (!transport) {
      if (connection && !warned) {
        warned = true;
        warn("pusher-js has no connection.transport here; resume is off for this client");
      }
      return;
    }
    if (hooked.has(transport)) return;
    hooked.add(transport);
    const emit = transport.emit;
    if (typeof emit !== "function") return;
    transport.emit = function (name, event) {
      if (name === "message" && event && typeof event.data === "string") {
        let swallow = false;
        try {
          swallow = observe(event.data);
        } catch (error) {
          warn(`ignoring a frame it could not read: ${error}`);
        }
        if (swallow) return this;
      }
      return emit.apply(this, arguments);
    };
  }

  function currentSocketId() {
    const id = pusher.connection && pusher.connection.socket_id;
    return typeof id === "string" ? id : undefined;
  }

  // Updates the channel state from one raw frame. Returns true when pusher-js must not see the
  // frame (a `ringcast:resume` on an encrypted channel, delivered here instead).
  function observe(raw) {
    // Fast path: until some channel has an epoch, only a frame that brings one matters.
    if (channels.size === 0 && raw.indexOf('"epoch"') < 0 && raw.indexOf(RESUME_EVENT) < 0) {
      return false;
    }
    const frame = JSON.parse(raw);
    if (!frame || typeof frame.event !== "string" || typeof frame.channel !== "string") {
      return false;
    }
    const name = frame.channel;
    const channel = pusher.channel(name);
    if (!channel) return false; // not (or no longer) subscribed by the app
    const event = frame.event;

    if (event === SUBSCRIPTION_SUCCEEDED) {
      if (!isEpoch(frame.epoch) || !isSeq(frame.seq)) {
        // This server does not sequence the channel: nothing to resume from.
        channels.delete(name);
        return false;
      }
      const state = channels.get(name);
      // A resumed subscription keeps its old position until `ringcast:resume` says where the
      // replay ended; a fresh one starts where the channel is now.
      if (!state || !state.resuming) {
        channels.set(name, {
          epoch: frame.epoch,
          seq: frame.seq,
          resuming: false,
          socketId: currentSocketId(),
        });
      }
      return false;
    }

    if (event === RESUME_EVENT) {
      const data = typeof frame.data === "string" ? JSON.parse(frame.data) : frame.data;
      if (!data || !isEpoch(data.epoch) || !isSeq(data.seq)) return false;
      channels.set(name, {
        epoch: data.epoch,
        seq: data.seq,
        resuming: false,
        socketId: currentSocketId(),
      });
      const outcome = {
        channel: name,
        recovered: data.recovered === true,
        epoch: data.epoch,
        seq: data.seq,
      };
      if (onResume) {
        try {
          onResume(outcome);
        } catch (error) {
          // The app's error surfaces, but never inside pusher-js's message handling.
          setTimeout(() => {
            throw error;
          }, 0);
        }
      }
      // pusher-js hands every non-internal event on an encrypted channel to its decryption,
      // which drops this one (no ciphertext); deliver it on the channel directly instead.
      if (name.indexOf(ENCRYPTED_PREFIX) === 0 && typeof channel.emit === "function") {
        channel.emit(RESUME_EVENT, data, {});
        return true;
      }
      return false;
    }

    if (event.indexOf("pusher:") === 0 || event.indexOf("pusher_internal:") === 0) return false;
    if (!isSeq(frame.seq)) return false;
    const state = channels.get(name);
    if (!state) return false;
    if (state.resuming) {
      // Replayed events advance the position one by one, so a connection lost mid-replay
      // resumes after the last event actually received, never past a gap.
      if (frame.seq === state.seq + 1) state.seq = frame.seq;
    } else {
      state.seq = frame.seq;
      state.socketId = currentSocketId();
    }
    return false;
  }

  // ---- Subscribing and unsubscribing ----

  const sendEvent = pusher.send_event;
  pusher.send_event = function (name, data, channelName) {
    if (data && typeof data.channel === "string") {
      if (name === "pusher:subscribe") {
        hookCurrentTransport();
        const state = channels.get(data.channel);
        if (state) {
          state.resuming = true;
          // The socket id the client had: events published excluding it (the client's own
          // client events, a REST publish with its socket_id) are not replayed to it.
          const resumeAfter = { epoch: state.epoch, seq: state.seq };
          if (state.socketId) resumeAfter.socket_id = state.socketId;
          data = Object.assign({}, data, { resume_after: resumeAfter });
        }
      } else if (name === "pusher:unsubscribe") {
        channels.delete(data.channel);
      }
    }
    return sendEvent.call(this, name, data, channelName);
  };

  const unsubscribe = pusher.unsubscribe;
  pusher.unsubscribe = function (name) {
    channels.delete(name);
    return unsubscribe.apply(this, arguments);
  };

  pusher.connection.bind("connected", hookCurrentTransport);
  hookCurrentTransport();
  return pusher;
}

/**
 * What the plugin knows of `channel` on `pusher`: `{ epoch, seq, resuming }` (a copy), or
 * `undefined` when it knows nothing (not subscribed, unsubscribed, or a server without
 * sequences). `resuming` is true from a resumed subscribe until its `ringcast:resume`.
 */
function resumeState(pusher, channel) {
  const channels = installed.get(pusher);
  const state = channels && channels.get(channel);
  return state ? { epoch: state.epoch, seq: state.seq, resuming: state.resuming } : undefined;
}

function isEpoch(value) {
  return typeof value === "string" && value.length > 0;
}

function isSeq(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

function warn(message) {
  if (typeof console !== "undefined" && console.warn) console.warn(`@ringcast/pusher-resume: ${message}`);
}

module.exports = { RESUME_EVENT, withResume, resumeState };
