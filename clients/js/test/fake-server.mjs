// A small Pusher-protocol server for the plugin's tests, with ringcast's history and resume
// (app option `event_sequence = true`) when `sequence` is true, and plain Pusher frames when it is
// false. It implements just what the tests need: connection_established, ping/pong, subscribe
// (public, private-, private-encrypted- and presence- channels, signatures checked with the test
// secret), unsubscribe, client events, and events published by the test (`publish`). The test
// drives failures: `dropAll` (sockets terminated, no close frame), `newEpoch` (history lost),
// `retainOnly` (old events no longer kept), `dropDuringNextReplay` (connection lost mid-replay).
//
// Resume rules (ringcast's): a subscribe with `resume_after: {epoch, seq}` gets
// subscription_succeeded (`epoch`, `seq` of the channel's last event), then every event with a
// greater seq in order, then `ringcast:resume` (recovered: true); when the epoch differs or an
// event after `seq` is no longer retained it replays nothing and sends `ringcast:resume` with
// recovered: false. Never a partial replay.

import { createHmac, randomBytes } from "node:crypto";
import { WebSocketServer } from "ws";

export const APP_KEY = "test-key";
export const APP_SECRET = "test-secret";

/** `key:hex(hmac_sha256(secret, text))`, the signature of a private or presence subscribe. */
export function sign(text, secret = APP_SECRET) {
  return `${APP_KEY}:${createHmac("sha256", secret).update(text).digest("hex")}`;
}

const newEpoch = () => randomBytes(8).toString("hex");

export class FakeServer {
  /**
   * `sequence`: ringcast's `event_sequence = true` (seq, epoch, resume) or plain Pusher frames;
   * `retain`: how many events each channel keeps for replay.
   */
  constructor({ sequence = true, retain = 1000 } = {}) {
    this.sequence = sequence;
    this.retain = retain;
    /** channel name -> { epoch, seq, history: [{ seq, text }], subscribers: Set<conn>, members: Map<socketId, member> } */
    this.channels = new Map();
    this.conns = new Set();
    /** Every frame a client sent, in order: `{ socketId, text, frame }` (`frame` parsed). */
    this.received = [];
    this.nextId = 1;
  }

  /** Listens on 127.0.0.1 on a free port; resolves with the port. */
  start() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    this.wss.on("connection", (socket, request) => this.accept(socket, request));
    return new Promise((resolve, reject) => {
      this.wss.once("listening", () => resolve((this.port = this.wss.address().port)));
      this.wss.once("error", reject);
    });
  }

  /** Terminates every connection and stops listening. */
  close() {
    for (const conn of this.conns) conn.socket.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }

  channel(name) {
    let channel = this.channels.get(name);
    if (!channel) {
      channel = { epoch: newEpoch(), seq: 0, history: [], subscribers: new Set(), members: new Map() };
      this.channels.set(name, channel);
    }
    return channel;
  }

  /** Connections open now. */
  get connections() {
    return this.conns.size;
  }

  /** The data of every `pusher:subscribe` received for `channel`, in order. */
  subscribes(channel) {
    return this.received
      .filter(({ frame }) => frame.event === "pusher:subscribe" && frame.data?.channel === channel)
      .map(({ frame }) => frame.data);
  }

  // ---- Driven by the tests ----

  /**
   * Publishes `event` with `data` (an object, sent as JSON text) on `channel` to its subscribers
   * except `except` (a connection); returns its seq (undefined without sequences).
   */
  publish(channel, event, data, { except, userId } = {}) {
    const ch = this.channel(channel);
    const frame = { event, channel, data: typeof data === "string" ? data : JSON.stringify(data) };
    if (userId !== undefined) frame.user_id = userId;
    if (this.sequence) frame.seq = ++ch.seq;
    const text = JSON.stringify(frame);
    if (this.sequence) {
      ch.history.push({ seq: ch.seq, text });
      if (ch.history.length > this.retain) ch.history.splice(0, ch.history.length - this.retain);
    }
    for (const conn of ch.subscribers) if (conn !== except) conn.socket.send(text);
    return frame.seq;
  }

  /**
   * Ends every connection: terminated (no close frame: the client sees an abnormal close, 1006),
   * or closed with `code` (e.g. 4200, ringcast's drain: "reconnect now").
   */
  dropAll({ code } = {}) {
    for (const conn of [...this.conns]) {
      if (code === undefined) conn.socket.terminate();
      else conn.socket.close(code, "bye");
      this.gone(conn);
    }
  }

  /** The server lost `channel`'s history: a new epoch, seq from 0 again. */
  newEpoch(channel) {
    const ch = this.channel(channel);
    ch.epoch = newEpoch();
    ch.seq = 0;
    ch.history = [];
    return ch.epoch;
  }

  /** Keeps only the last `count` events of `channel` for replay. */
  retainOnly(channel, count) {
    const ch = this.channel(channel);
    ch.history.splice(0, Math.max(0, ch.history.length - count));
  }

  /** The next resume on `channel` sends `count` replayed events, then the connection is lost. */
  dropDuringNextReplay(channel, count) {
    this.channel(channel).dropAfter = count;
  }

  // ---- The protocol ----

  accept(socket) {
    const conn = { socket, socketId: `${this.nextId++}.${Math.floor(Math.random() * 1e9)}`, channels: new Set() };
    this.conns.add(conn);
    socket.on("message", (bytes) => this.onMessage(conn, bytes.toString()));
    socket.on("close", () => this.gone(conn));
    socket.on("error", () => this.gone(conn));
    this.send(conn, "pusher:connection_established", { socket_id: conn.socketId, activity_timeout: 120 });
  }

  /** Sends one frame; `written` is called once it is written to the socket. */
  send(conn, event, data, extra = {}, channel, written) {
    const frame = { event };
    if (channel !== undefined) frame.channel = channel;
    frame.data = JSON.stringify(data);
    conn.socket.send(JSON.stringify(Object.assign(frame, extra)), written);
  }

  onMessage(conn, text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.send(conn, "pusher:error", { code: null, message: "invalid JSON" });
      return;
    }
    this.received.push({ socketId: conn.socketId, text, frame });
    const data = frame.data ?? {};
    switch (frame.event) {
      case "pusher:ping":
        this.send(conn, "pusher:pong", {});
        return;
      case "pusher:subscribe":
        this.subscribe(conn, data);
        return;
      case "pusher:unsubscribe":
        this.leave(conn, data.channel);
        return;
      default:
        if (typeof frame.event === "string" && frame.event.startsWith("client-")) {
          this.clientEvent(conn, frame);
        }
    }
  }

  subscribe(conn, data) {
    const name = data.channel;
    const presence = name.startsWith("presence-");
    if (name.startsWith("private-") || presence) {
      const signed = presence ? `${conn.socketId}:${name}:${data.channel_data}` : `${conn.socketId}:${name}`;
      if (data.auth !== sign(signed)) {
        this.send(conn, "pusher:subscription_error", { type: "AuthError", error: "bad signature", status: 401 }, {}, name);
        return;
      }
    }
    const ch = this.channel(name);
    let succeeded = {};
    if (presence) {
      const member = JSON.parse(data.channel_data);
      const userId = String(member.user_id);
      const known = [...ch.members.values()].some((m) => m.user_id === userId);
      ch.members.set(conn.socketId, { user_id: userId, user_info: member.user_info });
      if (!known) {
        for (const other of ch.subscribers) {
          this.send(other, "pusher_internal:member_added", { user_id: userId, user_info: member.user_info }, {}, name);
        }
      }
      const hash = {};
      for (const m of ch.members.values()) hash[m.user_id] = m.user_info ?? null;
      succeeded = { presence: { ids: Object.keys(hash), hash, count: Object.keys(hash).length } };
    }
    const sequenced = this.sequence ? { epoch: ch.epoch, seq: ch.seq } : {};
    const after = this.sequence ? data.resume_after : undefined;
    if (!after) {
      this.send(conn, "pusher_internal:subscription_succeeded", succeeded, sequenced, name);
    } else {
      const oldest = ch.history.length ? ch.history[0].seq : ch.seq + 1;
      const recovered =
        after.epoch === ch.epoch && Number.isInteger(after.seq) && after.seq <= ch.seq && oldest <= after.seq + 1;
      const missed = recovered ? ch.history.filter((entry) => entry.seq > after.seq) : [];
      if (recovered && ch.dropAfter !== undefined) {
        // Cut this resume: subscription_succeeded and the first `dropAfter` missed events, then
        // the socket is terminated once all of them are written to it.
        const sent = missed.slice(0, ch.dropAfter);
        delete ch.dropAfter;
        let unwritten = sent.length + 1;
        const cut = () => {
          if (--unwritten === 0) {
            conn.socket.terminate();
            this.gone(conn);
          }
        };
        this.send(conn, "pusher_internal:subscription_succeeded", succeeded, sequenced, name, cut);
        for (const entry of sent) conn.socket.send(entry.text, cut);
        return;
      }
      this.send(conn, "pusher_internal:subscription_succeeded", succeeded, sequenced, name);
      for (const entry of missed) conn.socket.send(entry.text);
      this.send(conn, "ringcast:resume", { channel: name, recovered, epoch: ch.epoch, seq: ch.seq }, {}, name);
    }
    ch.subscribers.add(conn);
    conn.channels.add(name);
  }

  leave(conn, name) {
    const ch = this.channels.get(name);
    if (!ch || !ch.subscribers.delete(conn)) return;
    conn.channels.delete(name);
    const member = ch.members.get(conn.socketId);
    if (member) {
      ch.members.delete(conn.socketId);
      const still = [...ch.members.values()].some((m) => m.user_id === member.user_id);
      if (!still) {
        for (const other of ch.subscribers) {
          this.send(other, "pusher_internal:member_removed", { user_id: member.user_id }, {}, name);
        }
      }
    }
  }

  clientEvent(conn, frame) {
    const name = frame.channel;
    if (!(name.startsWith("private-") || name.startsWith("presence-")) || !conn.channels.has(name)) return;
    const member = this.channels.get(name).members.get(conn.socketId);
    this.publish(name, frame.event, frame.data, { except: conn, userId: member?.user_id });
  }

  gone(conn) {
    if (!this.conns.delete(conn)) return;
    for (const name of [...conn.channels]) this.leave(conn, name);
  }
}
