//! Channel names and kinds (spec §2.1): the charset and length check, and the classification by
//! prefix that decides which authorization a subscription needs. Owns naming rules only; channel
//! state lives in the shard that owns the channel.

/// What a channel's name says about how it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-{id}`: only a connection signed in as that user may subscribe.
    ServerToUser,
}

pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelNameError {
    Empty,
    TooLong,
    InvalidCharacter,
}

impl ChannelNameError {
    pub fn message(self) -> &'static str {
        match self {
            ChannelNameError::Empty => "Channel name is empty",
            ChannelNameError::TooLong => "Channel name is too long",
            ChannelNameError::InvalidCharacter => "Channel name contains invalid characters",
        }
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// Classifies a name by its prefix. The cache prefix is orthogonal (see `is_cache`), so
/// `private-cache-x` is private and `presence-cache-x` is presence.
pub fn kind_of(name: &str) -> ChannelKind {
    if name.starts_with(SERVER_TO_USER_PREFIX) {
        ChannelKind::ServerToUser
    } else if name.starts_with("private-encrypted-") {
        ChannelKind::PrivateEncrypted
    } else if name.starts_with("private-") {
        ChannelKind::Private
    } else if name.starts_with("presence-") {
        ChannelKind::Presence
    } else {
        ChannelKind::Public
    }
}

/// Whether the channel keeps its last event (spec §5).
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// Validates a channel name from outside (client subscribe or REST trigger).
/// `#server-to-user-` names are allowed; any other `#` is reserved.
pub fn validate(name: &str, name_bytes_max: usize) -> Result<ChannelKind, ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > name_bytes_max {
        return Err(ChannelNameError::TooLong);
    }
    let rest = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
    if rest.is_empty() || !rest.bytes().all(is_name_byte) {
        return Err(ChannelNameError::InvalidCharacter);
    }
    Ok(kind_of(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_prefix() {
        assert_eq!(validate("my-channel", 200), Ok(ChannelKind::Public));
        assert_eq!(validate("private-foobar", 200), Ok(ChannelKind::Private));
        assert_eq!(
            validate("private-encrypted-x", 200),
            Ok(ChannelKind::PrivateEncrypted)
        );
        assert_eq!(validate("presence-room", 200), Ok(ChannelKind::Presence));
        assert_eq!(
            validate("#server-to-user-12", 200),
            Ok(ChannelKind::ServerToUser)
        );
        assert_eq!(validate("private-cache-x", 200), Ok(ChannelKind::Private));
        assert!(is_cache("private-cache-x") && is_cache("cache-x") && !is_cache("x-cache-"));
        assert_eq!(validate("A-Za-z0-9_-=@,.;", 200), Ok(ChannelKind::Public));
    }

    #[test]
    fn rejects() {
        assert_eq!(validate("", 200), Err(ChannelNameError::Empty));
        assert_eq!(
            validate(&"a".repeat(201), 200),
            Err(ChannelNameError::TooLong)
        );
        assert!(validate(&"a".repeat(200), 200).is_ok());
        for bad in ["a b", "a/b", "#x", "#server-to-user-", "é", "a:b", "a*"] {
            assert_eq!(
                validate(bad, 200),
                Err(ChannelNameError::InvalidCharacter),
                "{bad}"
            );
        }
    }
}
