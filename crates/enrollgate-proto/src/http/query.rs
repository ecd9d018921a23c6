//! Query strings (`application/x-www-form-urlencoded`, via `form_urlencoded`).

/// The first value of `name` in `query`, percent-decoded.
pub fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_finds_the_first() {
        assert_eq!(param("a=1&b=x%20y&a=2", "a").as_deref(), Some("1"));
        assert_eq!(param("a=1&b=x%20y", "b").as_deref(), Some("x y"));
        assert_eq!(param("a=1", "c"), None);
        assert_eq!(param("", "c"), None);
        assert_eq!(param("%zz=%", "%zz").as_deref(), Some("%"));
    }
}
