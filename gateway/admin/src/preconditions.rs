//! Conditional writes (RFC 9110 §13.1) for the resources the admin listener serves with an
//! `ETag`: tenant documents and SCIM users and groups. With `If-Match`, a write happens only
//! over the version the client read (or any, with `*`), so two read-modify-write cycles cannot
//! lose one's change; with `If-None-Match`, only when the resource is not at one of the given
//! versions (`*`: does not exist — create only).
//!
//! Tags are compared weakly (`W/"3"` matches `"3"`): SCIM clients send back the weak tags SCIM
//! gives (RFC 7644 §3.14), and a tenant document's tag is a hash of its whole content, so weak
//! and strong equality are the same thing for it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    Unconditional,
    /// Entity tags as sent (quoted, maybe `W/`), or `*`.
    Match(Vec<String>),
    NoneMatch(Vec<String>),
}

impl Precondition {
    /// The precondition of a request: `If-Match` if present, else `If-None-Match`.
    pub fn of(headers: &http::HeaderMap) -> Precondition {
        let tags = |name: http::header::HeaderName| -> Option<Vec<String>> {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|tag| tag.trim().to_string())
                .filter(|tag| !tag.is_empty())
                .collect();
            (!values.is_empty()).then_some(values)
        };
        if let Some(tags) = tags(http::header::IF_MATCH) {
            Precondition::Match(tags)
        } else if let Some(tags) = tags(http::header::IF_NONE_MATCH) {
            Precondition::NoneMatch(tags)
        } else {
            Precondition::Unconditional
        }
    }

    /// Whether a write may go ahead over the resource whose tag is `current` (`None`: there is
    /// no such resource).
    pub fn holds(&self, current: Option<&str>) -> bool {
        let listed = |tags: &[String], current: &str| {
            tags.iter()
                .any(|tag| tag == "*" || opaque(tag) == opaque(current))
        };
        match self {
            Precondition::Unconditional => true,
            Precondition::Match(tags) => current.is_some_and(|c| listed(tags, c)),
            Precondition::NoneMatch(tags) => !current.is_some_and(|c| listed(tags, c)),
        }
    }

    /// What the precondition asked for, for the `412`'s text.
    pub fn describe(&self) -> String {
        match self {
            Precondition::Unconditional => "nothing".to_string(),
            Precondition::Match(tags) => format!("If-Match: {}", tags.join(", ")),
            Precondition::NoneMatch(tags) => format!("If-None-Match: {}", tags.join(", ")),
        }
    }
}

/// A tag without its weakness mark (RFC 9110 §8.8.3.2, weak comparison).
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_are_read_from_if_match_then_if_none_match() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(Precondition::of(&headers), Precondition::Unconditional);
        headers.insert(http::header::IF_NONE_MATCH, "*".parse().unwrap());
        assert_eq!(
            Precondition::of(&headers),
            Precondition::NoneMatch(vec!["*".into()])
        );
        headers.insert(http::header::IF_MATCH, r#""a", W/"b""#.parse().unwrap());
        let precondition = Precondition::of(&headers);
        assert_eq!(
            precondition,
            Precondition::Match(vec![r#""a""#.into(), r#"W/"b""#.into()])
        );
        assert!(precondition.holds(Some(r#""a""#)));
        assert!(precondition.holds(Some(r#""b""#)), "weak comparison");
        assert!(!precondition.holds(Some(r#""c""#)));
        assert!(!precondition.holds(None), "If-Match needs a resource");
        let create_only = Precondition::NoneMatch(vec!["*".into()]);
        assert!(create_only.holds(None) && !create_only.holds(Some(r#""a""#)));
        let not_this = Precondition::NoneMatch(vec![r#"W/"3""#.into()]);
        assert!(!not_this.holds(Some(r#"W/"3""#)) && not_this.holds(Some(r#"W/"4""#)));
    }
}
