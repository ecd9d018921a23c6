//! Enrollment decisions, free of IO: whether a token may be redeemed for a method at a
//! given instant, and what names an identity may have.
//!
//! The handlers read the enrollment record from the store, ask [`check_token`], do the
//! cryptography, and hand the result to the committer, which asks the same question again
//! inside the atomic write (see `store::apply`): a token can be consumed by a racing request
//! between the two, and only the second answer counts.

use crate::clock::UnixTime;
use crate::model::{Enrollment, Method};

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
}
