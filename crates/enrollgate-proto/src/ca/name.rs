//! Names of auto-enrolled identities, from a CA's `identityNameFormat`.
//!
//! Symbols: `[caName]`, `[caId]`, `[commonName]`, `[requestedName]`, `[identityId]`.
//! A requested name fills `[requestedName]` (without one, the new identity's id does); as in
//! OpenZiti, it is used only where the CA's format asks for it: the format is the
//! operator's policy, and a device cannot name itself around it. A name that collides
//! later gets a numeric suffix (`enroll::suffixed_name`) in the daemon's committer
//! (`store::apply`), inside the same atomic write.

/// The symbols a format may use.
pub const SYMBOLS: [&str; 5] = [
    "[caName]",
    "[caId]",
    "[commonName]",
    "[requestedName]",
    "[identityId]",
];

/// Values for the symbols.
#[derive(Debug, Clone, Default)]
pub struct NameVars<'a> {
    /// The CA's name.
    pub ca_name: &'a str,
    /// The CA's id.
    pub ca_id: &'a str,
    /// The client certificate's subject CN, if it has one.
    pub common_name: Option<&'a str>,
    /// The name the client asked for, if any.
    pub requested_name: Option<&'a str>,
    /// The new identity's id.
    pub identity_id: &'a str,
}

/// Why a name cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameFormatError {
    /// The format uses something that looks like a symbol but is not one.
    #[error("unknown symbol '{0}' in the name format; known: [caName] [caId] [commonName] [requestedName] [identityId]")]
    UnknownSymbol(String),
    /// The format needs the certificate's CN and it has none.
    #[error("the name format needs the certificate's common name, and the certificate has none")]
    NoCommonName,
    /// The format is empty or too long.
    #[error("the name format must be 1 to 255 bytes")]
    Length,
}

/// Checks a format: every `[...]` is a known symbol.
pub fn validate_format(format: &str) -> Result<(), NameFormatError> {
    if format.is_empty() || format.len() > 255 {
        return Err(NameFormatError::Length);
    }
    let mut rest = format;
    while let Some(start) = rest.find('[') {
        let after = &rest[start..];
        match after.find(']') {
            Some(end) => {
                let symbol = &after[..=end];
                if !SYMBOLS.contains(&symbol) {
                    return Err(NameFormatError::UnknownSymbol(
                        symbol.chars().take(40).collect(),
                    ));
                }
                rest = &after[end + 1..];
            }
            None => {
                return Err(NameFormatError::UnknownSymbol(
                    after.chars().take(40).collect(),
                ))
            }
        }
    }
    Ok(())
}

/// The base name (before any collision suffix) of a new identity.
pub fn render(format: &str, vars: &NameVars<'_>) -> Result<String, NameFormatError> {
    validate_format(format)?;
    let requested = vars.requested_name.filter(|n| !n.is_empty());
    if format.contains("[commonName]") && vars.common_name.is_none_or(str::is_empty) {
        return Err(NameFormatError::NoCommonName);
    }
    // One left-to-right pass: a value that contains a symbol is not expanded again.
    let mut out = String::with_capacity(format.len() + 32);
    let mut rest = format;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after
            .find(']')
            .ok_or_else(|| NameFormatError::UnknownSymbol(after.into()))?;
        out.push_str(match &after[..=end] {
            "[caName]" => vars.ca_name,
            "[caId]" => vars.ca_id,
            "[commonName]" => vars.common_name.unwrap_or_default(),
            "[requestedName]" => requested.unwrap_or(vars.identity_id),
            "[identityId]" => vars.identity_id,
            other => return Err(NameFormatError::UnknownSymbol(other.into())),
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(cn: Option<&'a str>, req: Option<&'a str>) -> NameVars<'a> {
        NameVars {
            ca_name: "fleet",
            ca_id: "CA1",
            common_name: cn,
            requested_name: req,
            identity_id: "ID9",
        }
    }

    #[test]
    fn default_format() {
        assert_eq!(
            render(
                crate::model::DEFAULT_NAME_FORMAT,
                &vars(Some("dev-7"), None)
            )
            .unwrap(),
            "fleet-dev-7"
        );
    }

    #[test]
    fn every_symbol() {
        let f = "[caName]/[caId]/[commonName]/[requestedName]/[identityId]";
        assert_eq!(
            render(f, &vars(Some("cn"), Some("req"))).unwrap(),
            "fleet/CA1/cn/req/ID9"
        );
    }

    #[test]
    fn a_requested_name_is_used_only_where_the_format_asks_for_it() {
        assert_eq!(
            render("[caName]-[commonName]", &vars(Some("cn"), Some("mine"))).unwrap(),
            "fleet-cn"
        );
        assert_eq!(
            render("[caName]-[requestedName]", &vars(Some("cn"), Some("mine"))).unwrap(),
            "fleet-mine"
        );
        assert_eq!(
            render("[caName]-[commonName]", &vars(Some("cn"), Some(""))).unwrap(),
            "fleet-cn"
        );
    }

    #[test]
    fn values_are_not_expanded_again() {
        assert_eq!(
            render("[caName]-[commonName]", &vars(Some("[identityId]"), None)).unwrap(),
            "fleet-[identityId]"
        );
    }

    #[test]
    fn requested_name_defaults_to_the_identity_id() {
        assert_eq!(
            render("[caName].[requestedName]", &vars(None, None)).unwrap(),
            "fleet.ID9"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            render("[caName]-[commonName]", &vars(None, None)),
            Err(NameFormatError::NoCommonName)
        );
        assert!(matches!(
            validate_format("[caName]-[serial]"),
            Err(NameFormatError::UnknownSymbol(_))
        ));
        assert!(matches!(
            validate_format("[caName"),
            Err(NameFormatError::UnknownSymbol(_))
        ));
        assert_eq!(validate_format(""), Err(NameFormatError::Length));
        assert!(validate_format("plain-[identityId]").is_ok());
    }
}
