//! Property tests of the witness wire format (proptest: a failure prints the minimal case and
//! its seed). What they prove: any message round-trips, also behind another frame; arbitrary
//! bytes never panic and never yield a message without the secret; any single flipped bit
//! makes a frame fail or wait for more bytes, never decode to a message.

use proptest::prelude::*;

use super::*;
use crate::limits;

const SECRET: &[u8] = b"property secret!";

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() <= limits::REPL_NAME_BYTES_MAX {
                text.push(c);
            }
        }
        text
    })
}

fn message() -> impl Strategy<Value = WitnessMessage> {
    let numbers = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    (name(), 0u8..4, numbers, 0usize..4).prop_map(
        |(node, shape, (epoch, session, seq, lease_ms), tag)| match shape {
            0 => WitnessMessage::LeaseRequest {
                node,
                epoch,
                session,
                seq,
            },
            1 => WitnessMessage::PromoteRequest {
                node,
                epoch,
                session,
                seq,
            },
            2 => WitnessMessage::Granted {
                node,
                kind: if tag % 2 == 0 {
                    GrantKind::Lease
                } else {
                    GrantKind::Promotion
                },
                epoch,
                session,
                seq,
                lease_ms,
            },
            _ => WitnessMessage::Refused {
                node,
                reason: RefuseReason::ALL[tag],
                epoch,
                session,
                seq,
            },
        },
    )
}

proptest! {
    #[test]
    fn messages_round_trip(first in message(), second in message()) {
        let mut bytes = Vec::new();
        encode(SECRET, &first, &mut bytes);
        let first_len = bytes.len();
        encode(SECRET, &second, &mut bytes);
        let (decoded, used) = decode(SECRET, &bytes).unwrap().unwrap();
        prop_assert_eq!(decoded, first);
        prop_assert_eq!(used, first_len);
        let (decoded, used) = decode(SECRET, &bytes[first_len..]).unwrap().unwrap();
        prop_assert_eq!(decoded, second);
        prop_assert_eq!(first_len + used, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_pass(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(Some((message, used))) = decode(SECRET, &bytes) {
            // Only a frame with the right MAC passes, which random bytes do not forge.
            let mut again = Vec::new();
            encode(SECRET, &message, &mut again);
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
    }

    #[test]
    fn a_flipped_bit_never_decodes(message in message(), bit in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        encode(SECRET, &message, &mut bytes);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!matches!(decode(SECRET, &bytes), Ok(Some(_))));
    }
}
