// Types of @ringcast/pusher-resume (the implementation is index.mjs / index.cjs).

/** What a resumed subscription ended with: the data of the `ringcast:resume` event. */
export interface ResumeOutcome {
  /** The channel's name. */
  channel: string;
  /** true: every missed event was replayed before this; false: none was (history lost or no longer retained). */
  recovered: boolean;
  /** The channel's history now. */
  epoch: string;
  /** The seq of the channel's last event now. */
  seq: number;
}

export interface ResumeOptions {
  /** Called each time a resumed subscription is answered, after any replayed events. */
  onResume?: (outcome: ResumeOutcome) => void;
}

/** What the plugin knows of one channel. */
export interface ResumeState {
  epoch: string;
  seq: number;
  /** true from a resumed subscribe until its `ringcast:resume`. */
  resuming: boolean;
}

/** The structural part of a pusher-js 8 client the plugin uses. */
export interface PusherClient {
  send_event(name: string, data: any, channel?: string): boolean;
  unsubscribe(channelName: string): void;
  channel(name: string): any;
  connection: { bind(event: string, callback: (...args: any[]) => void): any };
}

/** "ringcast:resume" */
export declare const RESUME_EVENT: "ringcast:resume";

/** Adds history resume to a pusher-js 8 client; returns the same client. Call it before subscribing. */
export declare function withResume<P extends PusherClient>(pusher: P, options?: ResumeOptions): P;

/** What the plugin knows of `channel`, or undefined. */
export declare function resumeState(pusher: PusherClient, channel: string): ResumeState | undefined;
