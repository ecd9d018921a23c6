//! Enrollment decisions, free of IO: whether a token may be redeemed for a method at a
//! given instant, what names an identity may have, and which identity a `ca`
//! auto-enrollment creates ([`auto_enrolled_identity`]); what a request asks for
//! ([`request`]), and each method's steps from the facts to the store's write and the
//! answer ([`plan`]).
//!
//! The handlers read the enrollment record from the store, ask [`plan`], do the
//! cryptography, and hand the result to the committer, which asks [`check_token`] again
//! inside the atomic write (see `store::apply`): a token can be consumed by a racing request
//! between the two, and only the second answer counts.

pub mod plan;
pub mod request;

use crate::ca::name::{self, NameFormatError, NameVars};
use crate::clock::UnixTime;
use crate::model::{Authenticator, Ca, Enrollment, Identity, IdentityType, Method};

/// Why an enrollment request is refused before any cryptography.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Not `#[non_exhaustive]`: the daemon maps every variant to a response, and a new one
// must fail its build until it has one.
pub enum EnrollError {
    /// No pending enrollment has this token (never issued, already used, or deleted).
    #[error("the enrollment token is unknown or has already been used")]
    UnknownToken,
    /// The token exists but its `expiresAt` has passed.
    #[error("the enrollment token expired at {expired_at}")]
    Expired {
        /// RFC 3339 text of the expiry.
        expired_at: String,
    },
    /// The request names a method the token was not issued for, or no known method.
    #[error("{0}")]
    WrongMethod(String),
    /// The identity the token enrolls was deleted.
    #[error("the identity of this enrollment no longer exists")]
    IdentityGone,
}

/// Decides whether `enrollment` (looked up by the request's token) may be redeemed with
/// `requested` at `now`.
///
/// A token is live while `now < expires_at`: at the instant of expiry it is refused.
pub fn check_token(
    enrollment: Option<&Enrollment>,
    requested: Method,
    now: UnixTime,
) -> Result<&Enrollment, EnrollError> {
    let e = enrollment.ok_or(EnrollError::UnknownToken)?;
    if e.method != requested {
        return Err(EnrollError::WrongMethod(format!(
            "this token is for method '{}', not '{}'",
            e.method.as_str(),
            requested.as_str()
        )));
    }
    if now >= e.expires_at {
        return Err(EnrollError::Expired {
            expired_at: crate::clock::rfc3339(e.expires_at),
        });
    }
    Ok(e)
}

/// The longest identity name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Digits of the suffix that sets an auto-enrolled name apart from one already taken
/// (`dev-7` → `dev-7-000001`; see [`suffixed_name`]).
pub const NAME_SUFFIX_DIGITS: usize = 6;

/// The largest collision suffix the store tries (`999999`) before it answers that the name
/// is in use: every suffix has [`NAME_SUFFIX_DIGITS`] digits.
pub const MAX_NAME_SUFFIX: u32 = 10u32.pow(NAME_SUFFIX_DIGITS as u32) - 1;

/// The longest name a CA's template may render for an auto-enrolled identity: what is left
/// of [`MAX_NAME_LEN`] after `-` and the collision suffix, so that the suffixed name the
/// store may have to give it is still a valid name.
pub const MAX_AUTO_NAME_LEN: usize = MAX_NAME_LEN - 1 - NAME_SUFFIX_DIGITS;

/// `base` set apart by the collision suffix `suffix` (`dev-7`, 1 → `dev-7-000001`).
pub fn suffixed_name(base: &str, suffix: u32) -> String {
    format!("{base}-{suffix:0width$}", width = NAME_SUFFIX_DIGITS)
}

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty or only white space.
    #[error("the name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("the name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// Contains a control character, an invisible one, white space other than the space,
    /// or white space at either end.
    #[error(
        "the name contains a control or invisible character, white space other than the \
         space, or white space at either end"
    )]
    BadCharacter,
}

/// Checks an identity name: 1 to 255 bytes of UTF-8; no control character, no character
/// Unicode says is invisible (Default_Ignorable_Code_Point: zero-width spaces and joiners,
/// direction marks and overrides, the byte-order mark, variation selectors, tags...), no
/// white space other than the ASCII space, and none at either end. Names are compared
/// exactly, so characters a reader cannot see are refused: "Default Admin" cannot be
/// followed by a look-alike made with a no-break space and a zero-width space. Visible
/// look-alikes (a Cyrillic "а" for a Latin "a") are not detected.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.trim().is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let bad = |c: char| c.is_control() || (c.is_whitespace() && c != ' ') || invisible(c);
    if name.chars().any(bad) || name.trim() != name {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15.1):
/// characters that render as nothing.
fn invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Why a `ca` auto-enrollment gives the device no name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutoNameError {
    /// The CA's template needs a value this certificate lacks (its CN).
    #[error(transparent)]
    Template(#[from] NameFormatError),
    /// The rendered name leaves no room for a collision suffix.
    #[error("the identity name would be longer than {MAX_AUTO_NAME_LEN} bytes")]
    TooLong,
    /// The rendered name is not a valid identity name.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// The identity a `ca` auto-enrollment through `ca` creates for a verified leaf whose
/// subject CN is `common_name`: named by the CA's `identityNameFormat` (at most
/// [`MAX_AUTO_NAME_LEN`] bytes, a valid name), a `Device` with the CA's role attributes,
/// bound to `authenticator`. The store may still append a collision suffix to the name
/// ([`suffixed_name`]), inside the atomic write.
pub fn auto_enrolled_identity(
    ca: &Ca,
    common_name: Option<&str>,
    requested_name: Option<&str>,
    identity_id: String,
    authenticator: Authenticator,
    now: UnixTime,
) -> Result<Identity, AutoNameError> {
    let base = name::render(
        &ca.identity_name_format,
        &NameVars {
            ca_name: &ca.name,
            ca_id: &ca.id,
            common_name,
            requested_name,
            identity_id: &identity_id,
        },
    )?;
    if base.len() > MAX_AUTO_NAME_LEN {
        return Err(AutoNameError::TooLong);
    }
    validate_name(&base)?;
    Ok(Identity {
        id: identity_id,
        name: base,
        kind: IdentityType::Device,
        is_admin: false,
        role_attributes: ca.identity_roles.clone(),
        created_at: now,
        updated_at: now,
        enrollment_id: None,
        lifecycle: Default::default(),
        authenticator: Some(authenticator),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(method: Method, expires_at: UnixTime) -> Enrollment {
        Enrollment {
            id: "e".into(),
            token: "t".into(),
            method,
            identity_id: "i".into(),
            ca_id: None,
            created_at: 0,
            expires_at,
            jwt: String::new(),
            token_sha256: vec![],
        }
    }

    #[test]
    fn live_token_is_accepted_until_the_second_of_expiry() {
        let e = enrollment(Method::Ott, 1000);
        assert!(check_token(Some(&e), Method::Ott, 999).is_ok());
        assert!(matches!(
            check_token(Some(&e), Method::Ott, 1000),
            Err(EnrollError::Expired { .. })
        ));
        assert!(matches!(
            check_token(Some(&e), Method::Ott, 5000),
            Err(EnrollError::Expired { .. })
        ));
    }

    #[test]
    fn unknown_token_is_refused() {
        assert_eq!(
            check_token(None, Method::Ott, 0).unwrap_err(),
            EnrollError::UnknownToken
        );
    }

    #[test]
    fn token_for_another_method_is_refused_even_if_expired() {
        let e = enrollment(Method::Ottca, 10);
        assert!(matches!(
            check_token(Some(&e), Method::Ott, 100),
            Err(EnrollError::WrongMethod(_))
        ));
    }

    #[test]
    fn names() {
        assert!(validate_name("NewUser").is_ok());
        assert!(validate_name("dev-7 in hall 3").is_ok());
        assert!(validate_name("ünïcödé").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("   "), Err(NameError::Empty));
        assert_eq!(validate_name(" x"), Err(NameError::BadCharacter));
        assert_eq!(validate_name("a\nb"), Err(NameError::BadCharacter));
        assert_eq!(validate_name(&"x".repeat(256)), Err(NameError::TooLong));
        assert!(validate_name(&"x".repeat(255)).is_ok());
        // Look-alikes a reader cannot tell apart are refused.
        for name in [
            "Default\u{a0}Admin",
            "Default Admin\u{200b}",
            "dev1\u{2028}",
            "dev\u{202e}1",
            "\u{feff}dev1",
            "dev\u{2060}1",
            "dev\u{e0041}1",
            "dev\u{fe0f}1",
            "dev\u{3000}1",
        ] {
            assert_eq!(
                validate_name(name),
                Err(NameError::BadCharacter),
                "{name:?}"
            );
        }
        assert!(validate_name("東京-センサー-7").is_ok());
        assert!(validate_name("capteur-été").is_ok());
    }

    fn ca(format: &str) -> Ca {
        Ca {
            id: "CA1".into(),
            name: "fleet".into(),
            cert_pem: String::new(),
            fingerprint: String::new(),
            is_verified: true,
            verification_token: String::new(),
            is_auto_ca_enrollment_enabled: true,
            is_ott_ca_enrollment_enabled: false,
            is_auth_enabled: true,
            identity_roles: vec!["sensors".into()],
            identity_name_format: format.into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn authenticator() -> Authenticator {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dev".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        crate::pki::fingerprint::authenticator(cert.der(), false, Method::Ca, 5).unwrap()
    }

    #[test]
    fn the_longest_auto_enrolled_name_stays_valid_with_the_largest_suffix() {
        let longest = "a".repeat(MAX_AUTO_NAME_LEN);
        assert!(validate_name(&suffixed_name(&longest, MAX_NAME_SUFFIX)).is_ok());
        assert_eq!(suffixed_name("dev-7", 1), "dev-7-000001");
        assert_eq!(suffixed_name("dev-7", MAX_NAME_SUFFIX), "dev-7-999999");

        let make = |cn: &str| {
            auto_enrolled_identity(
                &ca("[commonName]"),
                Some(cn),
                None,
                "ID".into(),
                authenticator(),
                5,
            )
        };
        let made = make(&longest).unwrap();
        assert_eq!(made.name, longest);
        assert_eq!(made.kind, IdentityType::Device);
        assert_eq!(made.role_attributes, vec!["sensors".to_string()]);
        assert_eq!(made.created_at, 5);
        assert!(made.authenticator.is_some());
        assert_eq!(make(&format!("{longest}a")), Err(AutoNameError::TooLong));
    }

    #[test]
    fn auto_enrolled_names_come_from_the_template_and_are_checked() {
        let id = || "ID".to_string();
        let made = auto_enrolled_identity(
            &ca("[caName]-[commonName]"),
            Some("dev"),
            None,
            id(),
            authenticator(),
            5,
        )
        .unwrap();
        assert_eq!(made.name, "fleet-dev");
        assert_eq!(
            auto_enrolled_identity(&ca("[commonName]"), None, None, id(), authenticator(), 5),
            Err(AutoNameError::Template(NameFormatError::NoCommonName))
        );
        assert_eq!(
            auto_enrolled_identity(
                &ca("[commonName]"),
                Some("a\tb"),
                None,
                id(),
                authenticator(),
                5
            ),
            Err(AutoNameError::Name(NameError::BadCharacter))
        );
    }
}
