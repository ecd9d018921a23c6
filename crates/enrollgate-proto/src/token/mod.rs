//! Enrollment JWTs: issued by the daemon with the enrollment listener's TLS key, verified
//! by clients against the certificate that listener presents. Secret tokens: derived from
//! the token key, kept by the store only as hashes (`secret`). API sessions: tokens that
//! carry themselves, signed under a key derived from the token key (`session`).

pub mod jwt;
pub mod secret;
pub mod session;

pub use jwt::{Claims, JwtError, JwtSigner};
pub use secret::{token_sha256, TokenKey};
