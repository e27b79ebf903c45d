//! Pusher REST request authentication, auth_version 1.0 (spec §7.2): query parsing, the string
//! to sign, HMAC-SHA256 and MD5 helpers, verification, and signing for clients and tests. This
//! module is pure computation: it does no IO and never reads the clock (the caller passes the
//! current Unix time in), and it neither resolves apps nor chooses 404/403 (the caller does).

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The only REST auth version Pusher has ever defined.
const AUTH_VERSION: &str = "1.0";
/// Hex digits of an HMAC-SHA256 signature.
const SIGNATURE_HEX_LEN: usize = 64;

/// Characters left unescaped by [`sign_query`]: RFC 3986 unreserved, so every server decodes
/// the query back to exactly the values that were signed.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// Always 401: everything this module checks is an authentication failure.
    pub status: u16,
    pub message: String,
}

fn unauthorized(message: String) -> AuthError {
    AuthError {
        status: 401,
        message,
    }
}

/// Percent-decodes and splits a raw query string into (key, value) pairs in order. Keys are not
/// lowercased here (that happens when signing). `+` is kept literally, because node and python
/// send values unescaped (a `+` in their URLs is a real plus) and Guzzle encodes a space as
/// `%20`. Invalid percent-encodings are kept literally too.
///
/// Empty segments (`a=1&&b=2`) are skipped and a segment without `=` is a key with an empty
/// value, matching how the SDKs' URL libraries read such queries. Decoded bytes that are not
/// UTF-8 are replaced with U+FFFD; no SDK signs such values, so they only need to not panic.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// Percent-decodes one query key, value or path segment (invalid UTF-8 becomes U+FFFD).
pub fn decode(text: &str) -> String {
    // Most keys and values have nothing to decode (SDK timestamps, keys, hex digests).
    if !text.contains('%') {
        return text.to_owned();
    }
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

pub struct SignedRequest<'a> {
    /// The method as sent; it is signed uppercased.
    pub method: &'a str,
    /// The path to verify against (the caller strips a deployment prefix first, spec §7.2).
    pub path: &'a str,
    /// The decoded query, as returned by [`parse_query`].
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Verifies a REST request exactly as spec §7.2 describes, every failure being a 401:
/// `auth_key` equals `app_key`; `auth_version` is `1.0`; `auth_timestamp` is within
/// `window_secs` of `now_unix_secs` in either direction; `body_md5` is present when the body is
/// non-empty and, whenever present, equals the MD5 of the body (so the empty-body MD5 that
/// pusher-http-python sends on GET passes); and `auth_signature` equals the HMAC-SHA256 of
/// [`string_to_sign`] under `app_secret`, compared in constant time. Messages are Pusher-like,
/// e.g. `Timestamp expired: Given timestamp (X) not within 600s of server time (Y)` or
/// `Invalid signature: you should have sent HmacSHA256Hex("<string to sign, \n escaped>",
/// your_secret)`.
///
/// Besides the string from [`string_to_sign`], a signature over the PHP form is accepted when
/// the query has keys with a bracket suffix: pusher-http-php signs an array parameter as
/// `channels=a,b` while its URL carries `channels[0]=a&channels[1]=b` (or `channels[]=…`).
pub fn verify(
    request: &SignedRequest,
    app_key: &str,
    app_secret: &str,
    now_unix_secs: u64,
    window_secs: u64,
) -> Result<(), AuthError> {
    let auth_key = required(request.query, "auth_key")?;
    let auth_timestamp = required(request.query, "auth_timestamp")?;
    let auth_version = required(request.query, "auth_version")?;
    let auth_signature = required(request.query, "auth_signature")?;
    let body_md5 = optional(request.query, "body_md5")?;

    if auth_key != app_key {
        return Err(unauthorized(format!(
            "Invalid auth_key: {auth_key:?} is not the key of this app"
        )));
    }
    if auth_version != AUTH_VERSION {
        return Err(unauthorized(format!(
            "Unsupported auth_version: {auth_version:?} (only 1.0 is supported)"
        )));
    }

    let timestamp = parse_unix_secs(auth_timestamp).ok_or_else(|| {
        unauthorized(format!(
            "Invalid auth_timestamp: {auth_timestamp:?} is not a Unix time in seconds"
        ))
    })?;
    if now_unix_secs.abs_diff(timestamp) > window_secs {
        return Err(unauthorized(format!(
            "Timestamp expired: Given timestamp ({timestamp}) not within {window_secs}s of server time ({now_unix_secs})"
        )));
    }

    // Python sends the empty-body MD5 on GET too (spec §10 item 8), so a present body_md5 is
    // always checked against the actual body, empty or not.
    match body_md5 {
        Some(given) => {
            let actual = md5_hex(request.body);
            if !given.eq_ignore_ascii_case(&actual) {
                return Err(unauthorized(format!(
                    "Invalid body_md5: the MD5 of the request body is {actual}, but body_md5 is {given:?}"
                )));
            }
        }
        None if !request.body.is_empty() => {
            return Err(unauthorized(
                "Missing body_md5: it is required when the request has a body".to_owned(),
            ));
        }
        None => {}
    }

    // SDKs emit lowercase hex; accepting uppercase costs nothing since the bytes still have to
    // be the right HMAC.
    let mut given = [0u8; SIGNATURE_HEX_LEN];
    let given = match auth_signature.as_bytes() {
        sent if sent.len() == SIGNATURE_HEX_LEN => {
            for (to, from) in given.iter_mut().zip(sent) {
                *to = from.to_ascii_lowercase();
            }
            &given[..]
        }
        // Never equal to a signature, still compared so the answer takes the same path.
        _ => &[][..],
    };
    let expected_string = string_to_sign(request.method, request.path, request.query);
    let expected = hmac_sha256_hex(app_secret, &expected_string);
    if constant_time_eq(given, expected.as_bytes()) {
        return Ok(());
    }
    if let Some(php_string) = php_string_to_sign(request.method, request.path, request.query) {
        let php_expected = hmac_sha256_hex(app_secret, &php_string);
        if constant_time_eq(given, php_expected.as_bytes()) {
            return Ok(());
        }
    }
    Err(unauthorized(format!(
        "Invalid signature: you should have sent HmacSHA256Hex(\"{}\", your_secret)",
        expected_string.replace('\n', "\\n")
    )))
}

/// The value of a required auth parameter. Keys are matched case-insensitively because they are
/// signed lowercased; a repeated auth parameter is refused because it would be ambiguous which
/// one was checked.
fn required<'q>(query: &'q [(String, String)], name: &str) -> Result<&'q str, AuthError> {
    optional(query, name)?
        .ok_or_else(|| unauthorized(format!("Missing required parameter: {name}")))
}

fn optional<'q>(query: &'q [(String, String)], name: &str) -> Result<Option<&'q str>, AuthError> {
    let mut found = None;
    for (key, value) in query {
        if key.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(unauthorized(format!("Duplicate parameter: {name}")));
            }
            found = Some(value.as_str());
        }
    }
    Ok(found)
}

/// Unix seconds as sent by the SDKs: plain decimal digits, nothing else.
fn parse_unix_secs(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The string to sign: the method uppercased, `\n`, the path, `\n`, then every parameter except
/// `auth_signature` with its key lowercased, sorted byte-wise by key and rendered `key=value`
/// with the decoded value, joined by `&`. A repeated key (PHP `channels[]=a&channels[]=b`)
/// appears once with its values joined by `,` in arrival order. Exposed for tests and clients
/// (the bench tool signs requests with it).
pub fn string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> String {
    build_string_to_sign(method, path, query, |key| key)
}

/// The string pusher-http-php signs for array parameters: the bracket suffix (`[]` or `[N]`) is
/// not part of the key it signs. `None` when no key has such a suffix, so there is nothing else
/// to try.
fn php_string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> Option<String> {
    let any_array = query.iter().any(|(key, _)| strip_array_suffix(key) != key);
    any_array.then(|| build_string_to_sign(method, path, query, strip_array_suffix))
}

/// `channels[]` and `channels[3]` become `channels`; other keys are unchanged.
fn strip_array_suffix(key: &str) -> &str {
    let Some(open) = key.strip_suffix(']').and_then(|k| k.rfind('[')) else {
        return key;
    };
    let index = &key[open + 1..key.len() - 1];
    if open > 0 && index.bytes().all(|b| b.is_ascii_digit()) {
        &key[..open]
    } else {
        key
    }
}

fn build_string_to_sign(
    method: &str,
    path: &str,
    query: &[(String, String)],
    key_of: impl Fn(&str) -> &str,
) -> String {
    // A stable sort on the bytes of the lowercased key (not locale or PHP ksort order) keeps
    // the values of a repeated key in arrival order and adjacent, so they can be joined with ','
    // the way the SDKs join array values. Sorting rather than looking keys up one by one keeps
    // this O(n log n) for a query stuffed with parameters.
    // Keys are lowercased only when they have an uppercase letter (the SDKs send lowercase).
    let mut pairs: Vec<(Cow<str>, &str)> = query
        .iter()
        .map(|(key, value)| {
            let key = key_of(key);
            let key = if key.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(key.to_ascii_lowercase())
            } else {
                Cow::Borrowed(key)
            };
            (key, value.as_str())
        })
        .filter(|(key, _)| key != "auth_signature")
        .collect();
    pairs.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));

    let length: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(method.len() + path.len() + length + 2);
    out.extend(method.chars().map(|c| c.to_ascii_uppercase()));
    out.push('\n');
    out.push_str(path);
    out.push('\n');
    let mut previous: Option<&str> = None;
    for (key, value) in &pairs {
        if previous == Some(key.as_ref()) {
            // A repeated key: its values joined with ',' in arrival order (the sort is stable).
            out.push(',');
        } else {
            if previous.is_some() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            previous = Some(key.as_ref());
        }
        out.push_str(value);
    }
    out
}

pub fn hmac_sha256_hex(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length (longer ones are hashed), so this never fails; should a
    // future version refuse a key, the empty result can never equal a 64-digit signature.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(message.as_bytes());
    lower_hex(&mac.finalize().into_bytes())
}

pub fn md5_hex(body: &[u8]) -> String {
    lower_hex(&Md5::digest(body))
}

/// Lowercase hex of `bytes` (a digest: what the SDKs send and compare).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Builds a signed query string for a client request, as the SDKs do: `auth_key`,
/// `auth_timestamp`, `auth_version`, `body_md5` (only when the body is non-empty), the extra
/// parameters, then `auth_signature`. Used by tests and the bench tool.
///
/// Keys and values are percent-encoded in the URL but signed decoded, as the server decodes them.
pub fn sign_query(
    method: &str,
    path: &str,
    extra_params: &[(&str, &str)],
    body: &[u8],
    app_key: &str,
    app_secret: &str,
    timestamp: u64,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".to_owned(), app_key.to_owned()),
        ("auth_timestamp".to_owned(), timestamp.to_string()),
        ("auth_version".to_owned(), AUTH_VERSION.to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".to_owned(), md5_hex(body)));
    }
    params.extend(
        extra_params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let signature = hmac_sha256_hex(app_secret, &string_to_sign(method, path, &params));
    params.push(("auth_signature".to_owned(), signature));

    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, QUERY_VALUE),
                utf8_percent_encode(v, QUERY_VALUE)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Constant-time comparison of two byte strings (also used for channel auth strings elsewhere).
///
/// Only the contents are compared in constant time; the lengths are not secret (a signature is
/// always 64 hex digits).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "278d425bdf160c739803";
    const SECRET_A: &str = "7ad3773142a6692b25b8";
    const TS_A: u64 = 1353088179;
    const KEY_B: &str = "app-key";
    const SECRET_B: &str = "app-secret";
    const TS_B: u64 = 1700000000;
    const WINDOW: u64 = 600;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// One spec §11.2 vector: the raw query as a client sends it (signature included), the
    /// expected string to sign and signature.
    struct Vector {
        key: &'static str,
        secret: &'static str,
        ts: u64,
        method: &'static str,
        path: &'static str,
        raw_query: String,
        body: &'static [u8],
        string: &'static str,
        signature: &'static str,
    }

    fn vectors() -> Vec<Vector> {
        let auth_a = format!("auth_key={KEY_A}&auth_timestamp={TS_A}&auth_version=1.0");
        let auth_b = format!("auth_key={KEY_B}&auth_timestamp={TS_B}&auth_version=1.0");
        vec![
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "POST",
                path: "/apps/3/events",
                raw_query: format!("{auth_a}&body_md5=ec365a775a4cd0599faeb73354201b6f"),
                body: br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#,
                string: "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f",
                signature: "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "GET",
                path: "/apps/3/channels",
                raw_query: format!("filter_by_prefix=presence-&info=user_count&{auth_a}"),
                body: b"",
                string: "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count",
                signature: "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "GET",
                path: "/apps/3/channels/presence-foobar",
                // Guzzle-style: the comma arrives percent-encoded and must be decoded to sign.
                raw_query: format!("{auth_a}&info=user_count%2Csubscription_count"),
                body: b"",
                string: "GET\n/apps/3/channels/presence-foobar\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&info=user_count,subscription_count",
                signature: "377ee9260ea002a70c0d40cd887d55cb36db9f7f821297f5efacbcce66be356d",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "GET",
                path: "/apps/3/channels/presence-foobar/users",
                raw_query: format!("{auth_a}&body_md5=d41d8cd98f00b204e9800998ecf8427e"),
                body: b"",
                string: "GET\n/apps/3/channels/presence-foobar/users\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e",
                signature: "3d68b512095fd42cb6741cc80616761b1c77d00fcc4d6d9740f09504a4b761b0",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "POST",
                path: "/apps/3/batch_events",
                raw_query: format!("{auth_a}&body_md5=938395bb8b71d84f020a7684ee012cd0"),
                body: br#"{"batch":[{"channel":"my-channel","name":"my-event","data":"{\"x\":1}"},{"channel":"presence-foobar","name":"my-event","data":"hi","info":"user_count"}]}"#,
                string: "POST\n/apps/3/batch_events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=938395bb8b71d84f020a7684ee012cd0",
                signature: "7020a94d5c8ef8327207fa3500e73b5b50fa89875ee0f50ac8cac4deba68bca0",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "POST",
                path: "/apps/3/users/12345/terminate_connections",
                raw_query: format!("{auth_a}&body_md5=99914b932bd37a50b983c5e7c90ae93b"),
                body: b"{}",
                string: "POST\n/apps/3/users/12345/terminate_connections\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b",
                signature: "01fa634edeb0cae84115307cad5c23f65a46cd286461b1c89637a3b5871a8f0e",
            },
            Vector {
                key: KEY_A,
                secret: SECRET_A,
                ts: TS_A,
                method: "GET",
                path: "/apps/3/channels",
                raw_query: format!("Name=Something%20else&{auth_a}"),
                body: b"",
                string: "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&name=Something else",
                signature: "e661e8bf75b3959cbeab2cee466c873b918e39bfd0980693aadf77d4da8ba77c",
            },
            Vector {
                key: KEY_B,
                secret: SECRET_B,
                ts: TS_B,
                method: "POST",
                path: "/apps/app-id/events",
                raw_query: format!("{auth_b}&body_md5=1615a707e7b476b09e397edb9cc05e9b"),
                body: br#"{"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#,
                string: "POST\n/apps/app-id/events\nauth_key=app-key&auth_timestamp=1700000000&auth_version=1.0&body_md5=1615a707e7b476b09e397edb9cc05e9b",
                signature: "59e7ea9c566674ffb08efff7d4d2b96c4c6aae140721a67bd66d47934d78a3b0",
            },
            Vector {
                key: KEY_B,
                secret: SECRET_B,
                ts: TS_B,
                method: "GET",
                path: "/apps/app-id/channels/my-channel",
                raw_query: format!("info=subscription_count&{auth_b}"),
                body: b"",
                string: "GET\n/apps/app-id/channels/my-channel\nauth_key=app-key&auth_timestamp=1700000000&auth_version=1.0&info=subscription_count",
                signature: "4cbf92a410510162999714aea50fa5c0ac6947fd883c0f85f9cca4692d2a4df6",
            },
        ]
    }

    fn check(
        method: &str,
        path: &str,
        raw_query: &str,
        body: &[u8],
        key: &str,
        secret: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let query = parse_query(raw_query);
        verify(
            &SignedRequest {
                method,
                path,
                query: &query,
                body,
            },
            key,
            secret,
            now,
            WINDOW,
        )
    }

    fn signed_vector_query(v: &Vector) -> String {
        format!("{}&auth_signature={}", v.raw_query, v.signature)
    }

    #[test]
    fn spec_vectors_string_to_sign_and_signature() {
        for v in vectors() {
            let query = parse_query(&v.raw_query);
            let string = string_to_sign(v.method, v.path, &query);
            assert_eq!(string, v.string, "{}", v.path);
            assert_eq!(
                hmac_sha256_hex(v.secret, &string),
                v.signature,
                "{}",
                v.path
            );
        }
    }

    #[test]
    fn spec_vectors_verify() {
        for v in vectors() {
            let result = check(
                v.method,
                v.path,
                &signed_vector_query(&v),
                v.body,
                v.key,
                v.secret,
                v.ts,
            );
            assert_eq!(result, Ok(()), "{}", v.path);
        }
    }

    #[test]
    fn spec_vectors_body_md5() {
        for v in vectors() {
            if let Some((_, md5)) = v.raw_query.split_once("body_md5=") {
                assert_eq!(md5_hex(v.body), md5, "{}", v.path);
            }
        }
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"{}"), "99914b932bd37a50b983c5e7c90ae93b");
    }

    #[test]
    fn channel_auth_vector_uses_same_hmac() {
        // Spec §11.1: the first channel auth vector exercises the same HMAC helper.
        assert_eq!(
            hmac_sha256_hex(SECRET_A, "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn timestamp_window_both_directions() {
        let v = &vectors()[1];
        let query = signed_vector_query(v);
        let at = |now| check(v.method, v.path, &query, v.body, v.key, v.secret, now);
        assert_eq!(at(TS_A + WINDOW), Ok(()));
        assert_eq!(at(TS_A - WINDOW), Ok(()));
        let late = at(TS_A + WINDOW + 1).expect_err("too old");
        assert_eq!(late.status, 401);
        assert_eq!(
            late.message,
            format!(
                "Timestamp expired: Given timestamp ({TS_A}) not within 600s of server time ({})",
                TS_A + WINDOW + 1
            )
        );
        let early = at(TS_A - WINDOW - 1).expect_err("from the future");
        assert!(early.message.starts_with("Timestamp expired"));
    }

    #[test]
    fn missing_params() {
        let v = &vectors()[1];
        let full = signed_vector_query(v);
        for name in [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "auth_signature",
        ] {
            let without: Vec<&str> = full
                .split('&')
                .filter(|p| !p.starts_with(&format!("{name}=")))
                .collect();
            let err = check(
                v.method,
                v.path,
                &without.join("&"),
                v.body,
                v.key,
                v.secret,
                v.ts,
            )
            .expect_err(name);
            assert_eq!(err.status, 401);
            assert_eq!(err.message, format!("Missing required parameter: {name}"));
        }
    }

    #[test]
    fn wrong_key_and_version_and_timestamp_format() {
        let v = &vectors()[1];
        let full = signed_vector_query(v);
        let err = check(v.method, v.path, &full, v.body, "other-key", v.secret, v.ts)
            .expect_err("key mismatch");
        assert_eq!(err.status, 401);
        assert!(err.message.starts_with("Invalid auth_key"));

        let v2 = full.replace("auth_version=1.0", "auth_version=2.0");
        let err = check(v.method, v.path, &v2, v.body, v.key, v.secret, v.ts).expect_err("v2");
        assert!(err.message.starts_with("Unsupported auth_version"));

        let bad_ts = full.replace(&format!("auth_timestamp={TS_A}"), "auth_timestamp=12x");
        let err = check(v.method, v.path, &bad_ts, v.body, v.key, v.secret, v.ts).expect_err("ts");
        assert!(err.message.starts_with("Invalid auth_timestamp"));
    }

    #[test]
    fn wrong_secret_or_tampered_request() {
        let v = &vectors()[2];
        let full = signed_vector_query(v);
        let err =
            check(v.method, v.path, &full, v.body, v.key, "wrong", v.ts).expect_err("wrong secret");
        assert_eq!(err.status, 401);
        assert_eq!(
            err.message,
            "Invalid signature: you should have sent HmacSHA256Hex(\"GET\\n/apps/3/channels/presence-foobar\\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&info=user_count,subscription_count\", your_secret)"
        );
        let tampered = full.replace("subscription_count", "user_count");
        assert!(check(v.method, v.path, &tampered, v.body, v.key, v.secret, v.ts).is_err());
        assert!(check("POST", v.path, &full, v.body, v.key, v.secret, v.ts).is_err());
        assert!(
            check(
                v.method,
                "/apps/4/channels/presence-foobar",
                &full,
                v.body,
                v.key,
                v.secret,
                v.ts
            )
            .is_err()
        );
    }

    #[test]
    fn wrong_body_md5() {
        let v = &vectors()[0];
        let full = signed_vector_query(v);
        let err =
            check(v.method, v.path, &full, b"{}", v.key, v.secret, v.ts).expect_err("body changed");
        assert_eq!(err.status, 401);
        assert!(
            err.message.starts_with("Invalid body_md5"),
            "{}",
            err.message
        );
    }

    #[test]
    fn body_without_body_md5() {
        let body = b"{\"name\":\"x\"}";
        let query = sign_query("POST", "/apps/3/events", &[], b"", KEY_A, SECRET_A, TS_A);
        let err = check(
            "POST",
            "/apps/3/events",
            &query,
            body,
            KEY_A,
            SECRET_A,
            TS_A,
        )
        .expect_err("body_md5 missing");
        assert_eq!(err.status, 401);
        assert!(
            err.message.starts_with("Missing body_md5"),
            "{}",
            err.message
        );
    }

    #[test]
    fn python_style_get_with_empty_body_md5() {
        let v = &vectors()[3];
        let full = signed_vector_query(v);
        assert_eq!(
            check(v.method, v.path, &full, b"", v.key, v.secret, v.ts),
            Ok(())
        );
        // The same body_md5 with a non-empty body is a mismatch, not a pass.
        assert!(check(v.method, v.path, &full, b"x", v.key, v.secret, v.ts).is_err());
    }

    #[test]
    fn percent_encoded_comma_verifies_both_ways() {
        let v = &vectors()[2];
        let encoded = signed_vector_query(v);
        let plain = encoded.replace("%2C", ",");
        let lower = encoded.replace("%2C", "%2c");
        for query in [encoded, plain, lower] {
            assert_eq!(
                check(v.method, v.path, &query, b"", v.key, v.secret, v.ts),
                Ok(())
            );
        }
    }

    #[test]
    fn key_lowercasing_and_sorting() {
        let query = q(&[
            ("Zeta", "1"),
            ("alpha", "2"),
            ("auth_signature", "x"),
            ("B", "3"),
        ]);
        assert_eq!(
            string_to_sign("get", "/p", &query),
            "GET\n/p\nalpha=2&b=3&zeta=1"
        );
        // Byte-wise order: '_' (0x5f) sorts before lowercase letters.
        let query = q(&[("a_b", "1"), ("ab", "2"), ("a", "3")]);
        assert_eq!(
            string_to_sign("GET", "/p", &query),
            "GET\n/p\na=3&a_b=1&ab=2"
        );
        // An uppercased auth_signature is still not signed.
        let query = q(&[("AUTH_SIGNATURE", "x"), ("k", "v")]);
        assert_eq!(string_to_sign("GET", "/p", &query), "GET\n/p\nk=v");
    }

    #[test]
    fn repeated_keys_joined_with_comma() {
        let query = parse_query("channels[]=a&x=1&channels[]=b&X=2");
        assert_eq!(
            string_to_sign("GET", "/p", &query),
            "GET\n/p\nchannels[]=a,b&x=1,2"
        );
    }

    #[test]
    fn php_array_parameters_verify() {
        // pusher-http-php signs `channels=a,b` but sends `channels%5B0%5D=a&channels%5B1%5D=b`.
        let signed = q(&[
            ("auth_key", KEY_A),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("channels", "a,b"),
        ]);
        let signature = hmac_sha256_hex(SECRET_A, &string_to_sign("GET", "/apps/3/x", &signed));
        for array in [
            "channels%5B0%5D=a&channels%5B1%5D=b",
            "channels[]=a&channels[]=b",
        ] {
            let raw = format!(
                "auth_key={KEY_A}&auth_timestamp={TS_A}&auth_version=1.0&{array}&auth_signature={signature}"
            );
            assert_eq!(
                check("GET", "/apps/3/x", &raw, b"", KEY_A, SECRET_A, TS_A),
                Ok(()),
                "{array}"
            );
        }
        // A literal `channels[]` key signed as such (node style) verifies too.
        let raw = sign_query(
            "GET",
            "/apps/3/x",
            &[("channels[]", "a")],
            b"",
            KEY_A,
            SECRET_A,
            TS_A,
        );
        assert_eq!(
            check("GET", "/apps/3/x", &raw, b"", KEY_A, SECRET_A, TS_A),
            Ok(())
        );
    }

    #[test]
    fn duplicate_auth_params_rejected() {
        let v = &vectors()[1];
        let full = format!("{}&AUTH_KEY={KEY_A}", signed_vector_query(v));
        let err = check(v.method, v.path, &full, b"", v.key, v.secret, v.ts).expect_err("dup");
        assert_eq!(err.message, "Duplicate parameter: auth_key");
    }

    #[test]
    fn signature_with_a_digit_too_many_or_too_few_is_refused() {
        let v = &vectors()[1];
        for signature in [
            format!("{}0", v.signature),
            v.signature[..63].to_string(),
            String::new(),
        ] {
            let query = format!("{}&auth_signature={signature}", v.raw_query);
            let error = check(v.method, v.path, &query, b"", v.key, v.secret, v.ts).unwrap_err();
            assert!(error.message.starts_with("Invalid signature"), "{error:?}");
        }
    }

    #[test]
    fn lower_hex_and_decode_fast_path() {
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(decode("plain-value_1.0"), "plain-value_1.0");
        assert_eq!(decode("a%2Cb%20c"), "a,b c");
        assert_eq!(decode("bad%zz%"), "bad%zz%");
        assert_eq!(decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn uppercase_signature_hex_accepted() {
        let v = &vectors()[1];
        let query = format!(
            "{}&auth_signature={}",
            v.raw_query,
            v.signature.to_uppercase()
        );
        assert_eq!(
            check(v.method, v.path, &query, b"", v.key, v.secret, v.ts),
            Ok(())
        );
    }

    #[test]
    fn parse_query_rules() {
        assert_eq!(
            parse_query("a=1&b=x+y&c=%41%2c&d&&e=%zz&f=%E2%82%AC&g=a=b&%6B=v"),
            q(&[
                ("a", "1"),
                ("b", "x+y"),
                ("c", "A,"),
                ("d", ""),
                ("e", "%zz"),
                ("f", "€"),
                ("g", "a=b"),
                ("k", "v"),
            ])
        );
        assert_eq!(parse_query(""), Vec::<(String, String)>::new());
        assert_eq!(parse_query("Key=V"), q(&[("Key", "V")]));
        assert_eq!(parse_query("bad=%FF"), q(&[("bad", "\u{FFFD}")]));
    }

    #[test]
    fn sign_query_round_trips() {
        let body = br#"{"name":"e","channel":"c","data":"d"}"#;
        let query = sign_query(
            "POST",
            "/apps/app-id/events",
            &[("info", "user_count,subscription_count"), ("Name", "a b&c")],
            body,
            KEY_B,
            SECRET_B,
            TS_B,
        );
        assert!(query.starts_with(&format!(
            "auth_key=app-key&auth_timestamp={TS_B}&auth_version=1.0&body_md5={}&",
            md5_hex(body)
        )));
        assert!(query.contains("info=user_count%2Csubscription_count"));
        assert!(query.contains("Name=a%20b%26c"));
        assert_eq!(
            check(
                "POST",
                "/apps/app-id/events",
                &query,
                body,
                KEY_B,
                SECRET_B,
                TS_B
            ),
            Ok(())
        );

        let get = sign_query(
            "GET",
            "/apps/app-id/channels",
            &[],
            b"",
            KEY_B,
            SECRET_B,
            TS_B,
        );
        assert!(!get.contains("body_md5"));
        assert_eq!(
            check(
                "GET",
                "/apps/app-id/channels",
                &get,
                b"",
                KEY_B,
                SECRET_B,
                TS_B
            ),
            Ok(())
        );
    }

    #[test]
    fn sign_query_reproduces_spec_vector() {
        let v = &vectors()[7];
        let query = sign_query(v.method, v.path, &[], v.body, v.key, v.secret, v.ts);
        assert!(query.ends_with(&format!("auth_signature={}", v.signature)));
    }

    #[test]
    fn constant_time_eq_semantics() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn strip_array_suffix_cases() {
        assert_eq!(strip_array_suffix("channels[]"), "channels");
        assert_eq!(strip_array_suffix("channels[12]"), "channels");
        assert_eq!(strip_array_suffix("channels[x]"), "channels[x]");
        assert_eq!(strip_array_suffix("[]"), "[]");
        assert_eq!(strip_array_suffix("plain"), "plain");
        assert_eq!(strip_array_suffix("a]"), "a]");
    }
}
