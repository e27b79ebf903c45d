//! Socket ids (`^\d+\.\d+$`, spec §1.3): two integers joined by a dot. The first part is
//! random per process start, the second is a per-core counter with the core number in its low
//! bits, so ids never collide inside a process and stay below 2^53 (safe JavaScript integers).
//! Owns formatting and parsing only; no IO.

use std::fmt;

/// Largest value of either part: JavaScript's `Number.MAX_SAFE_INTEGER`.
const PART_MAX: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub high: u64,
    pub low: u64,
}

impl SocketId {
    /// Parses `^\d+\.\d+$` with both parts within the safe-integer range.
    pub fn parse(text: &str) -> Option<SocketId> {
        let (high, low) = text.split_once('.')?;
        let valid = |part: &str| {
            !part.is_empty() && part.len() <= 16 && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !valid(high) || !valid(low) {
            return None;
        }
        let high: u64 = high.parse().ok()?;
        let low: u64 = low.parse().ok()?;
        (high <= PART_MAX && low <= PART_MAX).then_some(SocketId { high, low })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

/// Hands out socket ids on one core: `core` is folded into the low bits so two cores never
/// produce the same id, and `epoch` (random per start) separates restarts.
#[derive(Debug)]
pub struct SocketIdGenerator {
    epoch: u64,
    core: u64,
    cores: u64,
    next: u64,
}

impl SocketIdGenerator {
    pub fn new(epoch: u64, core: usize, cores: usize) -> SocketIdGenerator {
        assert!(core < cores);
        SocketIdGenerator {
            epoch: epoch % 10_000_000_000,
            core: core as u64,
            cores: cores as u64,
            next: 1,
        }
    }

    pub fn next_id(&mut self) -> SocketId {
        let low = self.next * self.cores + self.core;
        self.next += 1;
        assert!(low <= PART_MAX, "socket id counter exhausted");
        SocketId {
            high: self.epoch,
            low,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let id = SocketId::parse("123.456").unwrap();
        assert_eq!(id.to_string(), "123.456");
        for bad in [
            "",
            "1",
            ".1",
            "1.",
            "a.1",
            "1.1.1",
            "-1.2",
            "1.2 ",
            "99999999999999999.1",
        ] {
            assert!(SocketId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cores_never_collide() {
        let mut a = SocketIdGenerator::new(7, 0, 2);
        let mut b = SocketIdGenerator::new(7, 1, 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next_id()));
            assert!(seen.insert(b.next_id()));
        }
    }
}
