//! The reconnecting fleet's decisions (`ringcast bench storm --hold-secs`), sans-IO: given how a
//! client's attempt or session ended, where and after how long it tries again, as pusher-js
//! does by close code: 4000-4099 (and a refusal that is not transient) give up; 4100-4199 back
//! off, exponentially with jitter; 4200-4299, an unknown code and a dropped session reconnect
//! at once; an upgrade answered 503 or 429 waits its `Retry-After` (jittered) and tries the next
//! address; a failed connect (or a connection lost before it was subscribed) tries the next
//! address at once, backing off once every address failed in a row. It must not touch sockets, read a clock or draw random numbers: the engine
//! passes a random value in and applies the delay on its own clock.

use crate::protocol::close_code::{ClientAction, client_action};

/// The fleet's reconnect settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// WebSocket addresses tried in turn (at least one).
    pub targets: usize,
    /// The first back-off; each further one in a row doubles, up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

/// How one attempt or session ended, as the policy needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The TCP connect failed (refused, unreachable, timed out).
    ConnectFailed,
    /// The connection ended without a close code (EOF, reset); `subscribed` when the client had
    /// been subscribed on it (the server went away), not while it was still being admitted.
    Lost { subscribed: bool },
    /// A close frame or a `pusher:error` with this code.
    Code(u16),
    /// The upgrade was answered with this status instead of 101.
    Refused {
        status: u16,
        retry_after_secs: Option<u32>,
    },
    /// A reply this client cannot use (a protocol error, a failed subscription).
    Protocol,
}

/// One client's reconnect state: where it connects and how many back-offs in a row it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Index of the address it connects to.
    pub target: usize,
    /// Back-offs since it was last subscribed.
    pub backoffs: u32,
    /// Failed connects in a row.
    pub connect_failures: u32,
}

impl Attempts {
    /// The client is subscribed: the next trouble starts from the first back-off again.
    pub fn subscribed(&mut self) {
        self.backoffs = 0;
        self.connect_failures = 0;
    }
}

/// What the client does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Connect to `Attempts::target` (already updated) after this many milliseconds.
    Retry { delay_ms: u64 },
    /// Stop: the server said this client must not come back (4000-4099, 4xx).
    GiveUp,
}

impl Policy {
    /// Decides the next step after `ended`, updating `attempts`; `random` is any uniformly
    /// drawn value (the jitter).
    pub fn next(&self, attempts: &mut Attempts, ended: Ended, random: u64) -> Next {
        let targets = self.targets.max(1);
        let failed_to_connect = matches!(
            ended,
            Ended::ConnectFailed | Ended::Lost { subscribed: false }
        );
        if !failed_to_connect {
            attempts.connect_failures = 0;
        }
        let delay_ms = match ended {
            // A connection lost before it was subscribed counts as a failed connect: a killed
            // node's listener that lingers a moment completes handshakes, then resets them.
            Ended::ConnectFailed | Ended::Lost { subscribed: false } => {
                attempts.connect_failures += 1;
                attempts.target = (attempts.target + 1) % targets;
                if attempts.connect_failures.is_multiple_of(targets as u32) {
                    self.backoff(attempts, random)
                } else {
                    0
                }
            }
            Ended::Lost { subscribed: true } => 0,
            Ended::Protocol => self.backoff(attempts, random),
            Ended::Code(code) => match client_action(code) {
                ClientAction::Refused | ClientAction::TlsOnly => return Next::GiveUp,
                ClientAction::Backoff => self.backoff(attempts, random),
                ClientAction::RetryNow | ClientAction::Default => 0,
            },
            Ended::Refused {
                status,
                retry_after_secs,
            } => {
                if status != 429 && status < 500 {
                    return Next::GiveUp;
                }
                // Not served here (a standby, an overloaded node): the next address next time.
                attempts.target = (attempts.target + 1) % targets;
                match retry_after_secs {
                    Some(secs) => {
                        let wait = u64::from(secs.min(3600)) * 1000;
                        wait + random % (wait / 2 + 1)
                    }
                    None => self.backoff(attempts, random),
                }
            }
        };
        Next::Retry { delay_ms }
    }

    /// The next back-off in a row: base × 2^(n-1) capped, then "equal jitter" (half of it
    /// fixed, half drawn), so clients shed together do not come back together.
    fn backoff(&self, attempts: &mut Attempts, random: u64) -> u64 {
        attempts.backoffs = attempts.backoffs.saturating_add(1);
        let doublings = (attempts.backoffs - 1).min(20);
        let full = self
            .backoff_base_ms
            .saturating_mul(1 << doublings)
            .min(self.backoff_max_ms)
            .max(1);
        full / 2 + random % (full - full / 2 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        targets: 2,
        backoff_base_ms: 1000,
        backoff_max_ms: 8000,
    };

    fn retry(policy: &Policy, attempts: &mut Attempts, ended: Ended, random: u64) -> u64 {
        match policy.next(attempts, ended, random) {
            Next::Retry { delay_ms } => delay_ms,
            Next::GiveUp => panic!("gave up after {ended:?}"),
        }
    }

    #[test]
    fn a_dropped_session_reconnects_at_once_to_the_same_address() {
        let mut attempts = Attempts::default();
        let lost = Ended::Lost { subscribed: true };
        assert_eq!(retry(&POLICY, &mut attempts, lost, 77), 0);
        assert_eq!(attempts.target, 0);
    }

    #[test]
    fn a_refused_connect_tries_the_next_address_then_backs_off_once_all_refused() {
        let mut attempts = Attempts::default();
        let refused = Ended::ConnectFailed;
        assert_eq!(retry(&POLICY, &mut attempts, refused, 0), 0);
        assert_eq!(attempts.target, 1);
        // Both addresses refused in a row: back off (half the base at least).
        let delay = retry(&POLICY, &mut attempts, refused, 0);
        assert_eq!((delay, attempts.target), (500, 0));
        assert_eq!(retry(&POLICY, &mut attempts, refused, 0), 0);
        let delay = retry(&POLICY, &mut attempts, refused, u64::MAX);
        assert!((1000..=2000).contains(&delay), "{delay}");
    }

    #[test]
    fn over_capacity_backs_off_exponentially_with_jitter_up_to_the_cap() {
        let mut attempts = Attempts::default();
        let mut previous_max = 0;
        for n in 0..8 {
            let mut low = attempts;
            let mut high = attempts;
            let shortest = retry(&POLICY, &mut low, Ended::Code(4100), 0);
            let full = (1000u64 << n).min(8000);
            let longest = retry(&POLICY, &mut high, Ended::Code(4100), full - full / 2);
            assert_eq!((shortest, longest), (full / 2, full), "back-off {n}");
            assert!(full >= previous_max);
            previous_max = full;
            attempts = low;
            assert_eq!(attempts.target, 0, "4100 stays on the address");
        }
        // Subscribed again: the next shed starts over.
        attempts.subscribed();
        assert_eq!(retry(&POLICY, &mut attempts, Ended::Code(4100), 0), 500);
    }

    #[test]
    fn close_codes_follow_the_pusher_ranges() {
        let mut attempts = Attempts::default();
        assert_eq!(retry(&POLICY, &mut attempts, Ended::Code(4200), 5), 0);
        assert_eq!(retry(&POLICY, &mut attempts, Ended::Code(1006), 5), 0);
        for code in [4001, 4009, 4099, 4000] {
            assert_eq!(
                POLICY.next(&mut attempts, Ended::Code(code), 5),
                Next::GiveUp
            );
        }
    }

    #[test]
    fn a_503_waits_its_retry_after_and_tries_the_next_address() {
        let mut attempts = Attempts::default();
        let standby = Ended::Refused {
            status: 503,
            retry_after_secs: Some(1),
        };
        assert_eq!(retry(&POLICY, &mut attempts, standby, 0), 1000);
        assert_eq!(attempts.target, 1);
        let delay = retry(&POLICY, &mut attempts, standby, u64::MAX);
        assert!((1000..=1500).contains(&delay), "{delay}");
        assert_eq!(attempts.target, 0);
        // Without Retry-After: a back-off. A 404 or 401: nothing to retry.
        let busy = Ended::Refused {
            status: 503,
            retry_after_secs: None,
        };
        assert!(retry(&POLICY, &mut attempts, busy, 0) >= 500);
        for status in [400, 401, 404] {
            let refused = Ended::Refused {
                status,
                retry_after_secs: None,
            };
            assert_eq!(POLICY.next(&mut attempts, refused, 0), Next::GiveUp);
        }
    }

    #[test]
    fn a_connection_lost_before_it_was_subscribed_counts_as_a_failed_connect() {
        let mut attempts = Attempts::default();
        let lost = Ended::Lost { subscribed: false };
        assert_eq!(retry(&POLICY, &mut attempts, lost, 0), 0);
        assert_eq!(attempts.target, 1);
        assert_eq!(retry(&POLICY, &mut attempts, Ended::ConnectFailed, 0), 500);
        assert_eq!(attempts.target, 0);
        assert_eq!(retry(&POLICY, &mut attempts, Ended::Protocol, 0), 1000);
    }
}
