//! Topic names and topic filters: the validation rules of MQTT section 4.7, and the parsing of
//! shared subscriptions (`$share/GROUP/FILTER`, MQTT 5.0 section 4.8.2).

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// [MQTT-4.7.3-1] topic names and filters are at least one character long.
    #[error("topic is empty")]
    Empty,
    /// [MQTT-4.7.3-2] no U+0000 in a topic.
    #[error("topic contains U+0000")]
    NullCharacter,
    /// [MQTT-3.3.2-2] a topic name in PUBLISH must not contain wildcards.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// [MQTT-4.7.1-2] `#` must be last and occupy a whole level.
    #[error("'#' must be the last character and occupy a whole level")]
    MisplacedMultiLevel,
    /// [MQTT-4.7.1-3] `+` must occupy a whole level.
    #[error("'+' must occupy a whole level")]
    MisplacedSingleLevel,
    /// [MQTT-4.8.2-1], [MQTT-4.8.2-2] a shared subscription needs a group name without
    /// wildcards and a non-empty filter.
    #[error(
        "shared subscription must be $share/GROUP/FILTER with a group name without '+', '#' or '/'"
    )]
    InvalidShare,
    /// [MQTT-4.7.3-3] topics are at most 65,535 bytes of UTF-8.
    #[error("topic is longer than 65,535 bytes")]
    TooLong,
}

impl TopicError {
    /// The error in words, for a reason that must be `'static` (the decoder's errors).
    pub fn as_str(self) -> &'static str {
        match self {
            TopicError::Empty => "topic is empty",
            TopicError::NullCharacter => "topic contains U+0000",
            TopicError::WildcardInName => "topic name contains a wildcard",
            TopicError::MisplacedMultiLevel => {
                "'#' must be the last character and occupy a whole level"
            }
            TopicError::MisplacedSingleLevel => "'+' must occupy a whole level",
            TopicError::InvalidShare => "shared subscription is not $share/GROUP/FILTER",
            TopicError::TooLong => "topic is longer than 65,535 bytes",
        }
    }
}

/// Checks a topic name as carried in PUBLISH or a will.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks the syntax of a topic filter of section 4.7 on the whole filter, as sent: at least
/// one character [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2], `#` alone in the last level and `+`
/// alone in its level ([MQTT-4.7.1-2] [MQTT-4.7.1-3]; 5.0: [MQTT-4.7.1-1] [MQTT-4.7.1-2]). A
/// filter failing it is malformed: the decoder refuses the packet carrying it. Whether a
/// well-formed `$share/…` filter is a valid shared subscription is [`parse_shared`]'s to say.
pub fn validate_filter_syntax(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    validate_plain_filter(filter)
}

/// Checks a topic filter as carried in SUBSCRIBE or UNSUBSCRIBE, shared form included.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let plain = match parse_shared(filter)? {
        Some((_, f)) => f,
        None => filter,
    };
    validate_plain_filter(plain)
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > 65_535 {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// Splits `$share/GROUP/FILTER` into `(GROUP, FILTER)`. `Ok(None)` for an ordinary filter;
/// an error for a malformed shared one.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::InvalidShare);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::InvalidShare);
    }
    validate_plain_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Whether `filter` (not shared) matches the topic `name`, by the rules of section 4.7,
/// including [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a name starting
/// with `$`. This is the simple reference; the broker's topic tree does the same faster.
pub fn filter_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("sensor/temp").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/+",
            "/+",
            "$share/g/a/#",
            "$SYS/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_topic_filter("a/#/c"),
            Err(TopicError::MisplacedMultiLevel)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MisplacedMultiLevel)
        );
        assert_eq!(
            validate_topic_filter("a/b+"),
            Err(TopicError::MisplacedSingleLevel)
        );
        assert_eq!(
            validate_topic_filter("$share/g"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share//a"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share/g+/a"),
            Err(TopicError::InvalidShare)
        );
    }

    #[test]
    fn matching() {
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/#", "sport")); // [MQTT-4.7.1-2] parent level
        assert!(filter_matches("#", "a/b"));
        assert!(!filter_matches("#", "$SYS/x")); // [MQTT-4.7.2-1]
        assert!(!filter_matches("+/x", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
    }
}
