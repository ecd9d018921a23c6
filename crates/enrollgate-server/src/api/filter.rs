//! The name filter of list endpoints, a subset of OpenZiti's filter language:
//! `name = "x"`, `name contains "x"`, `name startswith "x"` (`true` matches all).

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFilter {
    /// Everything.
    All,
    /// Exactly this name.
    Eq(String),
    /// Names containing this text.
    Contains(String),
    /// Names starting with this text.
    StartsWith(String),
}

impl NameFilter {
    /// Parses a filter expression.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "true" {
            return Ok(Self::All);
        }
        let rest = s
            .strip_prefix("name")
            .ok_or_else(|| format!("unsupported filter '{s}': only name filters are supported"))?
            .trim_start();
        let (op, value) = if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else if let Some(v) = strip_word(rest, "contains") {
            ("contains", v)
        } else if let Some(v) = strip_word(rest, "startswith") {
            ("startswith", v)
        } else {
            return Err(format!(
                "unsupported filter '{s}': use name = \"x\", name contains \"x\" or name startswith \"x\""
            ));
        };
        let value = value.trim();
        let inner = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("the value in filter '{s}' must be in double quotes"))?;
        let inner = inner.replace("\\\"", "\"").replace("\\\\", "\\");
        Ok(match op {
            "=" => Self::Eq(inner),
            "contains" => Self::Contains(inner),
            _ => Self::StartsWith(inner),
        })
    }

    /// Whether `name` passes.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Eq(v) => name == v,
            Self::Contains(v) => name.contains(v.as_str()),
            Self::StartsWith(v) => name.starts_with(v.as_str()),
        }
    }
}

fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let rest = s.get(..word.len())?;
    if rest.eq_ignore_ascii_case(word) {
        s.get(word.len()..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(NameFilter::parse("").unwrap(), NameFilter::All);
        assert_eq!(
            NameFilter::parse("name = \"a b\"").unwrap(),
            NameFilter::Eq("a b".into())
        );
        assert_eq!(
            NameFilter::parse("name contains \"dev\"").unwrap(),
            NameFilter::Contains("dev".into())
        );
        assert_eq!(
            NameFilter::parse("name startswith \"x\"").unwrap(),
            NameFilter::StartsWith("x".into())
        );
        assert_eq!(
            NameFilter::parse("name=\"q\\\"t\"").unwrap(),
            NameFilter::Eq("q\"t".into())
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            "id = \"x\"",
            "name ~ \"x\"",
            "name = x",
            "name contains \"x",
        ] {
            assert!(NameFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let f = NameFilter::Contains("ev".into());
        assert!(f.matches("dev-1"));
        assert!(!f.matches("user"));
    }
}
