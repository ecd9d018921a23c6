//! Enrollment JWTs: issued by the daemon with the enrollment listener's TLS key, verified
//! by clients against the certificate that listener presents.

pub mod jwt;

pub use jwt::{Claims, JwtError, JwtSigner};
