//! The validity period of an X.509 certificate, read from its DER bytes: just enough of a DER
//! walk to reach `tbsCertificate.validity` (RFC 5280 §4.1), so the server can refuse an expired
//! certificate at start and export its expiry as a metric. Sans-IO: no clock (the caller passes
//! the time) and no allocation; every length is checked against the bytes that are there, and
//! bad input is an error value, never a panic. It verifies nothing (rustls does the rest).

/// A certificate's validity period, in Unix seconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// Why the validity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("truncated DER")]
    Truncated,
    #[error("unexpected DER tag {found:#04x} where {expected} was expected")]
    UnexpectedTag { expected: &'static str, found: u8 },
    #[error("DER length form not supported")]
    BadLength,
    #[error("malformed time `{0}`")]
    BadTime(String),
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_INTEGER: u8 = 0x02;
const TAG_VERSION: u8 = 0xa0;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// Reads one tag-length-value from the front of `input`; returns the tag and the value.
fn read_tlv<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), X509Error> {
    let [tag, first, rest @ ..] = *input else {
        return Err(X509Error::Truncated);
    };
    let (tag, first) = (*tag, *first);
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(X509Error::BadLength);
        }
        if rest.len() < count {
            return Err(X509Error::Truncated);
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(X509Error::Truncated);
    }
    *input = &rest[length..];
    Ok((tag, &rest[..length]))
}

fn expect<'a>(
    input: &mut &'a [u8],
    tag: u8,
    expected: &'static str,
) -> Result<&'a [u8], X509Error> {
    let (found, value) = read_tlv(input)?;
    if found != tag {
        return Err(X509Error::UnexpectedTag { expected, found });
    }
    Ok(value)
}

/// The validity period of the DER certificate `der`.
///
/// # Errors
/// When the bytes are not a certificate of the expected shape up to its validity.
pub fn validity(der: &[u8]) -> Result<Validity, X509Error> {
    let mut input = der;
    let mut certificate = expect(&mut input, TAG_SEQUENCE, "Certificate")?;
    let mut tbs = expect(&mut certificate, TAG_SEQUENCE, "tbsCertificate")?;
    if tbs.first() == Some(&TAG_VERSION) {
        read_tlv(&mut tbs)?;
    }
    expect(&mut tbs, TAG_INTEGER, "serialNumber")?;
    expect(&mut tbs, TAG_SEQUENCE, "signature")?;
    expect(&mut tbs, TAG_SEQUENCE, "issuer")?;
    let mut validity = expect(&mut tbs, TAG_SEQUENCE, "validity")?;
    let not_before = read_time(&mut validity)?;
    let not_after = read_time(&mut validity)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn read_time(input: &mut &[u8]) -> Result<i64, X509Error> {
    let (tag, value) = read_tlv(input)?;
    let bad = || X509Error::BadTime(String::from_utf8_lossy(value).into_owned());
    let digits = match (tag, value) {
        (TAG_UTC_TIME | TAG_GENERALIZED_TIME, [digits @ .., b'Z']) => digits,
        (TAG_UTC_TIME | TAG_GENERALIZED_TIME, _) => return Err(bad()),
        (found, _) => {
            return Err(X509Error::UnexpectedTag {
                expected: "Time",
                found,
            });
        }
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0i64, |n, &digit| n * 10 + i64::from(digit - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (TAG_UTC_TIME, 12) => {
            let year = number(0..2);
            (if year >= 50 { 1900 + year } else { 2000 + year }, 2)
        }
        (TAG_GENERALIZED_TIME, 14) => (number(0..4), 4),
        _ => return Err(bad()),
    };
    let (month, day) = (number(rest..rest + 2), number(rest + 2..rest + 4));
    let (hour, minute, second) = (
        number(rest + 4..rest + 6),
        number(rest + 6..rest + 8),
        number(rest + 8..rest + 10),
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    // 60: a leap second.
    if second > 60 {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `unix_secs` as an RFC 3339 UTC time (for messages that name an expiry).
pub fn format_utc(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let seconds = unix_secs.rem_euclid(86_400);
    // The inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if value.len() < 0x80 {
            out.push(value.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    /// A certificate shaped enough for `validity` (the rest is filler).
    fn certificate(not_before: (u8, &str), not_after: (u8, &str), version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(tlv(TAG_VERSION, &tlv(TAG_INTEGER, &[2])));
        }
        tbs.extend(tlv(TAG_INTEGER, &[0x01, 0x23]));
        tbs.extend(tlv(TAG_SEQUENCE, &[0x06, 0x01, 0x2a]));
        tbs.extend(tlv(TAG_SEQUENCE, &[0x31; 200]));
        let mut validity = tlv(not_before.0, not_before.1.as_bytes());
        validity.extend(tlv(not_after.0, not_after.1.as_bytes()));
        tbs.extend(tlv(TAG_SEQUENCE, &validity));
        tbs.extend(tlv(TAG_SEQUENCE, &[0x31; 10]));
        let mut certificate = tlv(TAG_SEQUENCE, &tbs);
        certificate.extend(tlv(TAG_SEQUENCE, &[0x06, 0x01, 0x2a]));
        tlv(TAG_SEQUENCE, &certificate)
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let der = certificate(
            (TAG_UTC_TIME, "250101000000Z"),
            (TAG_GENERALIZED_TIME, "20510203040506Z"),
            true,
        );
        let validity = validity(&der).unwrap();
        assert_eq!(validity.not_before, 1_735_689_600);
        assert_eq!(format_utc(validity.not_before), "2025-01-01T00:00:00Z");
        assert_eq!(format_utc(validity.not_after), "2051-02-03T04:05:06Z");
        let old = certificate(
            (TAG_UTC_TIME, "991231235959Z"),
            (TAG_UTC_TIME, "491231235959Z"),
            false,
        );
        let validity = super::validity(&old).unwrap();
        assert_eq!(format_utc(validity.not_before), "1999-12-31T23:59:59Z");
        assert_eq!(format_utc(validity.not_after), "2049-12-31T23:59:59Z");
    }

    #[test]
    fn rejects_malformed_times_and_shapes() {
        let bad_month = certificate(
            (TAG_UTC_TIME, "251301000000Z"),
            (TAG_UTC_TIME, "260101000000Z"),
            true,
        );
        assert!(matches!(validity(&bad_month), Err(X509Error::BadTime(_))));
        let no_zone = certificate(
            (TAG_UTC_TIME, "2501010000000"),
            (TAG_UTC_TIME, "260101000000Z"),
            true,
        );
        assert!(matches!(validity(&no_zone), Err(X509Error::BadTime(_))));
        assert_eq!(validity(&[]), Err(X509Error::Truncated));
        assert!(matches!(
            validity(&[0x04, 0x00]),
            Err(X509Error::UnexpectedTag { .. })
        ));
        assert_eq!(
            validity(&[0x30, 0x85, 0, 0, 0, 0, 1]),
            Err(X509Error::BadLength)
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validity(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..300) {
            let der = certificate(
                (TAG_UTC_TIME, "250101000000Z"),
                (TAG_UTC_TIME, "260101000000Z"),
                true,
            );
            let cut = cut.min(der.len() - 1);
            prop_assert!(validity(&der[..cut]).is_err());
        }

        #[test]
        fn times_round_trip(secs in 0i64..4_102_444_800) {
            let text = format_utc(secs);
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            let der = certificate(
                (TAG_GENERALIZED_TIME, &format!("{digits}Z")),
                (TAG_GENERALIZED_TIME, &format!("{digits}Z")),
                true,
            );
            prop_assert_eq!(validity(&der).unwrap().not_after, secs);
        }
    }
}
