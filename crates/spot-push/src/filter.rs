//! Topic filters (and the topic-name check) with MQTT semantics (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
//!
//! One matcher, [`TopicFilter::matches`], is used by every outlet (WebSocket, SSE, MQTT
//! subscriptions of the hub, webhooks), so a filter means the same thing everywhere:
//! - levels are separated by `/`; empty levels are allowed (`/finance` has two levels);
//! - `+` matches exactly one level (possibly empty) and must occupy a whole level;
//! - `#` matches the parent level and any number of child levels; it must be the last level
//!   and occupy it alone;
//! - a filter whose first level is a wildcard does not match topics starting with `$`.

use std::fmt;

/// Longest topic name or filter accepted, in bytes (the MQTT limit of a UTF-8 string).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or topic filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {0} bytes long, more than the maximum of {MAX_TOPIC_LEN}")]
    TooLong(usize),
    /// The NUL character is not allowed in topics.
    #[error("topic contains a NUL character at byte {0}")]
    Nul(usize),
    /// A wildcard (`+` or `#`) shares its level with other characters, e.g. `sport+`.
    #[error("wildcard in level {level} ({text:?}) must occupy the whole level")]
    WildcardNotAlone {
        /// Zero-based level index.
        level: usize,
        /// The level's text.
        text: String,
    },
    /// `#` is not the last level, e.g. `sport/#/ranking`.
    #[error("`#` at level {0} must be the last level of the filter")]
    HashNotLast(usize),
    /// A topic name (not a filter) contains a wildcard.
    #[error("topic name contains the wildcard {0:?}; wildcards are only allowed in filters")]
    WildcardInName(char),
}

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(text.len()));
    }
    if let Some(at) = text.find('\0') {
        return Err(TopicError::Nul(at));
    }
    Ok(())
}

/// Checks that `name` is a valid topic name to publish to (no wildcards).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if let Some(c) = name.chars().find(|c| *c == '+' || *c == '#') {
        return Err(TopicError::WildcardInName(c));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+`
    One,
    /// `#`
    Rest,
}

/// A parsed, valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

impl TopicFilter {
    /// Parses and validates a filter.
    pub fn new(text: &str) -> Result<Self, TopicError> {
        check_common(text)?;
        let parts: Vec<&str> = text.split('/').collect();
        let last = parts.len() - 1;
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let level = match part {
                "+" => Level::One,
                "#" if i == last => Level::Rest,
                "#" => return Err(TopicError::HashNotLast(i)),
                _ if part.contains(['+', '#']) => {
                    return Err(TopicError::WildcardNotAlone {
                        level: i,
                        text: part.to_owned(),
                    })
                }
                _ => Level::Exact(part.to_owned()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` (a topic name) matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let mut names = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => match names.next() {
                    Some(got) if got == want => {}
                    _ => return false,
                },
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for TopicFilter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter).expect(filter).matches(topic)
    }

    // MQTT 3.1.1 §4.7.1.2 / MQTT 5 §4.7.1.2: the multi-level wildcard.
    #[test]
    fn spec_multi_level_wildcard_examples() {
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(m("sport/#", "sport"));
        assert!(m("#", "sport/tennis/player1"));
        assert!(m("#", "/"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis/player2"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis"));
        assert!(TopicFilter::new("sport/tennis/#").is_ok());
        assert_eq!(
            TopicFilter::new("sport/tennis#"),
            Err(TopicError::WildcardNotAlone {
                level: 1,
                text: "tennis#".into()
            })
        );
        assert_eq!(
            TopicFilter::new("sport/tennis/#/ranking"),
            Err(TopicError::HashNotLast(2))
        );
    }

    // §4.7.1.3: the single-level wildcard.
    #[test]
    fn spec_single_level_wildcard_examples() {
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(TopicFilter::new("+").is_ok());
        assert!(TopicFilter::new("+/tennis/#").is_ok());
        assert!(matches!(
            TopicFilter::new("sport+"),
            Err(TopicError::WildcardNotAlone { level: 0, .. })
        ));
        assert!(TopicFilter::new("sport/+/player1").is_ok());
        assert!(m("sport/+/player1", "sport/tennis/player1"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
    }

    // §4.7.2: topics beginning with `$`.
    #[test]
    fn spec_dollar_topic_examples() {
        assert!(!m("#", "$SYS/broker/clients"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    // §4.7.3: topic semantic and usage.
    #[test]
    fn spec_semantic_examples() {
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new("a\0b"), Err(TopicError::Nul(1)));
        assert!(!m("ACCOUNTS", "Accounts"), "topics are case sensitive");
        assert!(
            m("Accounts payable", "Accounts payable"),
            "spaces are allowed"
        );
        assert!(m("/finance", "/finance"));
        assert!(!m("finance", "/finance"), "a leading / is a distinct level");
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            TopicFilter::new(&long),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn topic_names_refuse_wildcards() {
        assert_eq!(
            validate_topic_name("spots/+/connected"),
            Err(TopicError::WildcardInName('+'))
        );
        assert_eq!(
            validate_topic_name("items/#"),
            Err(TopicError::WildcardInName('#'))
        );
        assert!(validate_topic_name("presences/7/created/3/1/near").is_ok());
    }

    #[test]
    fn spot_topics_of_spec_section_7() {
        let t = "presences/12/changed-proximity/5/1/immediate/near/moved-closer";
        assert!(m("presences/#", t));
        assert!(m("presences/+/changed-proximity/+/1/#", t));
        assert!(!m("presences/+/created/#", t));
        assert!(m("spots/+/connected/+", "spots/3/connected/203"));
        assert!(!m("spots/+/connected", "spots/3/connected/203"));
        assert!(m("items/+/moved-to/4", "items/9/moved-to/4"));
    }

    /// A topic built from outside text (spot-protocol's §7 builders) is a valid name of the
    /// intended number of levels, matched by the filter for that shape.
    #[test]
    fn built_topics_from_outside_text_are_valid_names() {
        let topic = spot_protocol::topics::raw_spot_event(3, "a/b+#", "x\0");
        assert!(validate_topic_name(&topic).is_ok());
        let filter = TopicFilter::new("spots/+/events/+/+").expect("filter");
        assert!(filter.matches(&topic));
    }
}
