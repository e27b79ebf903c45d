//! Pusher close codes and `pusher:error` codes in one table (spec §1.4), with the canonical
//! messages. Owns numbers and wording only; deciding when to close is the shard's job.
//!
//! The ranges matter to pusher-js: 4000-4099 stop reconnecting, 4100-4199 back off, 4200-4299
//! reconnect at once, 4300+ stop. A test checks each code sits in the range its meaning needs.

/// A Pusher application-level close code with its canonical message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    pub code: u16,
    pub message: &'static str,
}

pub const APP_NOT_FOUND: u16 = 4001;
pub const APP_DISABLED: u16 = 4003;
pub const APP_OVER_QUOTA: u16 = 4004;
pub const PATH_NOT_FOUND: u16 = 4005;
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
pub const UNAUTHORIZED: u16 = 4009;
pub const OVER_CAPACITY: u16 = 4100;
pub const SLOW_CONSUMER: u16 = 4101;
pub const RECONNECT_NOW: u16 = 4200;
pub const PONG_TIMEOUT: u16 = 4201;
/// A client event (or an oversized presence `user_info`) refused; the connection stays open.
pub const CLIENT_EVENT_REJECTED: u16 = 4301;
/// A signin watchlist over the app's `watchlist_max`; the first entries are kept.
pub const WATCHLIST_LIMIT: u16 = 4302;

pub const OVER_CAPACITY_CLOSE: CloseCode = CloseCode {
    code: OVER_CAPACITY,
    message: "Over capacity",
};
pub const SLOW_CONSUMER_CLOSE: CloseCode = CloseCode {
    code: SLOW_CONSUMER,
    message: "Client is not reading fast enough",
};
pub const SERVER_CLOSING: CloseCode = CloseCode {
    code: RECONNECT_NOW,
    message: "Server is closing. Please reconnect shortly.",
};
pub const PONG_NOT_RECEIVED: CloseCode = CloseCode {
    code: PONG_TIMEOUT,
    message: "Pong reply not received in time",
};
pub const APP_DISABLED_CLOSE: CloseCode = CloseCode {
    code: APP_DISABLED,
    message: "The app is not enabled.",
};
/// The clients of an app a reload removed: 4001, as for an unknown key (whose canonical
/// message names the key, which the reloaded table no longer has).
pub const APP_REMOVED_CLOSE: CloseCode = CloseCode {
    code: APP_NOT_FOUND,
    message: "The app no longer exists.",
};
pub const APP_OVER_QUOTA_CLOSE: CloseCode = CloseCode {
    code: APP_OVER_QUOTA,
    message: "Application is over connection quota",
};
pub const PATH_NOT_FOUND_CLOSE: CloseCode = CloseCode {
    code: PATH_NOT_FOUND,
    message: "Path not found",
};
pub const UNSUPPORTED_PROTOCOL_CLOSE: CloseCode = CloseCode {
    code: UNSUPPORTED_PROTOCOL,
    message: "Unsupported protocol version",
};

/// A client message left unfinished past `server.ws_message_timeout_ms`: 1008, RFC 6455's
/// code for a message that violates the endpoint's policy, and the one RFC 6455 names for when
/// no more specific code fits. Not a Pusher 4xxx code: the fault is in the WebSocket framing,
/// below the Pusher protocol, and pusher-js treats 1008 as any other standard close (it
/// reconnects after a second), which suits a client that was merely slow.
pub const MESSAGE_TIMEOUT_CLOSE: CloseCode = CloseCode {
    code: crate::ws::frame::CLOSE_POLICY,
    message: "Message not completed in time",
};
/// A client message that would take its core's unfinished messages over
/// `server.ws_partial_bytes_per_core_max`: 1009, RFC 6455's "message too big for it to
/// process" (the endpoint cannot take that message now), rather than the generic 1008. pusher-js
/// reconnects after a second, like after 1008.
pub const PARTIAL_BUDGET_CLOSE: CloseCode = CloseCode {
    code: crate::ws::frame::CLOSE_TOO_BIG,
    message: "No room for more unfinished messages",
};

/// What pusher-js does after a close with `code` (`Protocol.getCloseAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    Refused,
    Backoff,
    RetryNow,
    TlsOnly,
    Default,
}

pub fn client_action(code: u16) -> ClientAction {
    match code {
        1002..=1004 => ClientAction::Backoff,
        0..=3999 => ClientAction::Default,
        4000 => ClientAction::TlsOnly,
        4001..=4099 => ClientAction::Refused,
        4100..=4199 => ClientAction::Backoff,
        4200..=4299 => ClientAction::RetryNow,
        _ => ClientAction::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_sit_in_the_range_their_meaning_needs() {
        // Configuration problems must stop reconnection; transient ones must not.
        for code in [
            APP_NOT_FOUND,
            APP_DISABLED,
            APP_OVER_QUOTA,
            PATH_NOT_FOUND,
            UNSUPPORTED_PROTOCOL,
            UNAUTHORIZED,
        ] {
            assert_eq!(client_action(code), ClientAction::Refused, "{code}");
        }
        for code in [OVER_CAPACITY, SLOW_CONSUMER] {
            assert_eq!(client_action(code), ClientAction::Backoff, "{code}");
        }
        for code in [RECONNECT_NOW, PONG_TIMEOUT] {
            assert_eq!(client_action(code), ClientAction::RetryNow, "{code}");
        }
        for close in [MESSAGE_TIMEOUT_CLOSE, PARTIAL_BUDGET_CLOSE] {
            assert_eq!(
                client_action(close.code),
                ClientAction::Default,
                "{close:?}"
            );
        }
        assert_eq!(client_action(1002), ClientAction::Backoff);
        assert_eq!(client_action(1009), ClientAction::Default);
    }
}
