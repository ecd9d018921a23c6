//! The errors a client can see, and the one exhaustive mapping from each to its HTTP
//! status and error code (DESIGN.md, "Errors"). Handlers never choose a status by hand.

use crate::enroll::{EnrollError, NameError};
use crate::pki::csr::CsrError;
use crate::store::StoreError;

/// An error answered to a client, in the envelope
/// `{"error":{"code","message","requestId"},"meta":{}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// `INVALID_ENROLLMENT_TOKEN` 400: unknown or used token.
    #[error("{0}")]
    InvalidEnrollmentToken(String),
    /// `ENROLLMENT_EXPIRED` 400.
    #[error("{0}")]
    EnrollmentExpired(String),
    /// `INVALID_ENROLL_METHOD` 400: unknown method, or a token used with another method.
    #[error("{0}")]
    InvalidEnrollMethod(String),
    /// `COULD_NOT_PROCESS_CSR` 400: not PEM, not exactly one PEM block, not a CSR, bad
    /// signature, unsupported key.
    #[error("{0}")]
    CouldNotProcessCsr(String),
    /// `CSR_NAME_MISMATCH` 400: an EST `simplereenroll` CSR whose subject or
    /// subjectAltName is not the current certificate's (RFC 7030 §4.2.2).
    #[error("{0}")]
    CsrNameMismatch(String),
    /// `CERT_FAILED_VALIDATION` 400: no verified auto-enrollment CA accepts the chain.
    #[error("{0}")]
    CertFailedValidation(String),
    /// `CERTIFICATE_FAILED_VALIDATION` 400: an `ottca` chain or a CA proof of possession
    /// does not verify.
    #[error("{0}")]
    CertificateFailedValidation(String),
    /// `ENROLLMENT_CA_NOT_VALID` 400: the CA of an `ottca` token is gone or disabled.
    #[error("{0}")]
    EnrollmentCaNotValid(String),
    /// `INVALID_COMMON_NAME` 400: the proof-of-possession certificate's CN is not the
    /// verification token, or a name template needs a CN the certificate lacks.
    #[error("{0}")]
    InvalidCommonName(String),
    /// `EXPECTED_PEM_CERTIFICATE` 400: a body that should be a PEM certificate is not.
    #[error("{0}")]
    ExpectedPemCertificate(String),
    /// `CA_ALREADY_VERIFIED` 409.
    #[error("{0}")]
    CaAlreadyVerified(String),
    /// `CA_EXISTS` 409: a CA with the same certificate exists.
    #[error("{0}")]
    CaExists(String),
    /// `CERT_IN_USE` 409: the certificate is already bound to an identity.
    #[error("{0}")]
    CertInUse(String),
    /// `NAME_IN_USE` 409: another identity, or another CA, has this name.
    #[error("{0}")]
    NameInUse(String),
    /// `INVALID_NAME` 400.
    #[error("{0}")]
    InvalidName(String),
    /// `COULD_NOT_PARSE_BODY` 400: a JSON body that does not parse or lacks a field.
    #[error("{0}")]
    CouldNotParseBody(String),
    /// `INVALID_PARAMETER` 400: a query parameter with a bad value.
    #[error("{0}")]
    InvalidParameter(String),
    /// `INVALID_STATE` 409: the operation does not apply to the record as it is now
    /// (e.g. refreshing a token of an identity that has already enrolled).
    #[error("{0}")]
    InvalidState(String),
    /// `CERT_NOT_RENEWABLE` 409: a third-party CA issued the certificate; it renews it.
    #[error("{0}")]
    NotRenewable(String),
    /// `IDENTITY_DISABLED` 403: an admin disabled the identity; it cannot authenticate,
    /// renew or enroll until enabled (or its suspension ends).
    #[error("{0}")]
    IdentityDisabled(String),
    /// `CERT_REVOKED` 403: the certificate was revoked (its identity deleted or
    /// re-enrolled) and binds no identity until an admin lifts that.
    #[error("{0}")]
    CertRevoked(String),
    /// `INVALID_AUTH` 401: `/authenticate` with a certificate that does not authenticate.
    #[error("{0}")]
    InvalidAuth(String),
    /// `UNAUTHORIZED` 401: the management API needs an admin's client certificate.
    #[error("{0}")]
    Unauthorized(String),
    /// `EST_UNAUTHORIZED` 401, answered with `WWW-Authenticate: Basic realm="enrollgate"`
    /// (RFC 7030 §3.2.3): an EST request whose credentials (HTTP Basic with an enrollment
    /// token, or the client certificate) do not authenticate it.
    #[error("{0}")]
    EstUnauthorized(String),
    /// `CROSS_SITE_REQUEST` 403: a management request a browser made for another site
    /// (`Sec-Fetch-Site: cross-site`/`same-site`, or a foreign `Origin`): the browser
    /// would have attached the admin's certificate to it.
    #[error("{0}")]
    CrossSiteRequest(String),
    /// `NOT_FOUND` 404.
    #[error("{0}")]
    NotFound(String),
    /// `METHOD_NOT_ALLOWED` 405, answered with an `Allow` header.
    #[error("{message}")]
    MethodNotAllowed {
        /// Human text.
        message: String,
        /// The methods the path takes, as the `Allow` header lists them.
        allow: &'static str,
    },
    /// `LENGTH_REQUIRED` 411: a body without Content-Length (chunked uploads are refused).
    #[error("{0}")]
    LengthRequired(String),
    /// `REQUEST_TOO_LARGE` 413: the body exceeds `limits.max_body_bytes`.
    #[error("{0}")]
    RequestTooLarge(String),
    /// `UNSUPPORTED_MEDIA` 415.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// `HEADERS_TOO_LARGE` 431.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// `MALFORMED_REQUEST` 400: the HTTP framing itself is broken.
    #[error("{0}")]
    MalformedRequest(String),
    /// `RATE_LIMITED` 429, with `Retry-After` seconds.
    #[error("{message}")]
    RateLimited {
        /// Human text.
        message: String,
        /// Seconds the client should wait.
        retry_after: u32,
    },
    /// `SERVICE_UNAVAILABLE` 503, with `Retry-After`: the daemon is shutting down, or its
    /// database cannot be reached now (nothing was written).
    #[error("{0}")]
    ServiceUnavailable(String),
    /// `UNHANDLED` 500: a bug or a failure of the machine (disk, store). Never the answer
    /// to anything a client can send.
    #[error("{0}")]
    Unhandled(String),
}

impl ApiError {
    /// HTTP status and error code. Exhaustive: a new variant does not compile until it
    /// has both.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::InvalidEnrollmentToken(_) => (400, "INVALID_ENROLLMENT_TOKEN"),
            Self::EnrollmentExpired(_) => (400, "ENROLLMENT_EXPIRED"),
            Self::InvalidEnrollMethod(_) => (400, "INVALID_ENROLL_METHOD"),
            Self::CouldNotProcessCsr(_) => (400, "COULD_NOT_PROCESS_CSR"),
            Self::CsrNameMismatch(_) => (400, "CSR_NAME_MISMATCH"),
            Self::CertFailedValidation(_) => (400, "CERT_FAILED_VALIDATION"),
            Self::CertificateFailedValidation(_) => (400, "CERTIFICATE_FAILED_VALIDATION"),
            Self::EnrollmentCaNotValid(_) => (400, "ENROLLMENT_CA_NOT_VALID"),
            Self::InvalidCommonName(_) => (400, "INVALID_COMMON_NAME"),
            Self::ExpectedPemCertificate(_) => (400, "EXPECTED_PEM_CERTIFICATE"),
            Self::CaAlreadyVerified(_) => (409, "CA_ALREADY_VERIFIED"),
            Self::CaExists(_) => (409, "CA_EXISTS"),
            Self::CertInUse(_) => (409, "CERT_IN_USE"),
            Self::NameInUse(_) => (409, "NAME_IN_USE"),
            Self::InvalidName(_) => (400, "INVALID_NAME"),
            Self::CouldNotParseBody(_) => (400, "COULD_NOT_PARSE_BODY"),
            Self::InvalidParameter(_) => (400, "INVALID_PARAMETER"),
            Self::InvalidState(_) => (409, "INVALID_STATE"),
            Self::NotRenewable(_) => (409, "CERT_NOT_RENEWABLE"),
            Self::IdentityDisabled(_) => (403, "IDENTITY_DISABLED"),
            Self::CertRevoked(_) => (403, "CERT_REVOKED"),
            Self::InvalidAuth(_) => (401, "INVALID_AUTH"),
            Self::Unauthorized(_) => (401, "UNAUTHORIZED"),
            Self::EstUnauthorized(_) => (401, "EST_UNAUTHORIZED"),
            Self::CrossSiteRequest(_) => (403, "CROSS_SITE_REQUEST"),
            Self::NotFound(_) => (404, "NOT_FOUND"),
            Self::MethodNotAllowed { .. } => (405, "METHOD_NOT_ALLOWED"),
            Self::LengthRequired(_) => (411, "LENGTH_REQUIRED"),
            Self::RequestTooLarge(_) => (413, "REQUEST_TOO_LARGE"),
            Self::UnsupportedMedia(_) => (415, "UNSUPPORTED_MEDIA"),
            Self::HeadersTooLarge(_) => (431, "HEADERS_TOO_LARGE"),
            Self::MalformedRequest(_) => (400, "MALFORMED_REQUEST"),
            Self::RateLimited { .. } => (429, "RATE_LIMITED"),
            Self::ServiceUnavailable(_) => (503, "SERVICE_UNAVAILABLE"),
            Self::Unhandled(_) => (500, "UNHANDLED"),
        }
    }

    /// The error's JSON envelope.
    pub fn envelope(&self, request_id: &str) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        // What went wrong inside (a store path, RocksDB's text) is for the log, which
        // has it under the same request id, not for whoever sent the request.
        let message = match self {
            Self::Unhandled(_) => {
                "internal error; the gateway's log has it under this requestId".to_string()
            }
            other => other.to_string(),
        };
        serde_json::json!({
            "error": { "code": code, "message": message, "requestId": request_id },
            "meta": {}
        })
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        let msg = e.to_string();
        match e {
            EnrollError::UnknownToken | EnrollError::IdentityGone => {
                Self::InvalidEnrollmentToken(msg)
            }
            EnrollError::Expired { .. } => Self::EnrollmentExpired(msg),
            EnrollError::WrongMethod(_) => Self::InvalidEnrollMethod(msg),
        }
    }
}

impl From<crate::http::body::BodyError> for ApiError {
    fn from(e: crate::http::body::BodyError) -> Self {
        use crate::http::body::BodyError;
        let msg = e.to_string();
        match e {
            BodyError::NotJson { .. } | BodyError::Untyped => Self::UnsupportedMedia(msg),
            BodyError::Invalid(_) => Self::CouldNotParseBody(msg),
        }
    }
}

impl From<crate::enroll::request::RequestError> for ApiError {
    fn from(e: crate::enroll::request::RequestError) -> Self {
        use crate::enroll::request::RequestError;
        let msg = e.to_string();
        match e {
            RequestError::UnknownMethod(_) => Self::InvalidEnrollMethod(msg),
            RequestError::NoCsr => Self::CouldNotProcessCsr(msg),
            RequestError::CsrMediaType(_) => Self::UnsupportedMedia(msg),
            RequestError::Body(e) => e.into(),
        }
    }
}

impl From<crate::enroll::plan::Refusal> for ApiError {
    fn from(e: crate::enroll::plan::Refusal) -> Self {
        use crate::enroll::plan::Refusal;
        use crate::enroll::AutoNameError;
        use crate::model::Method;
        let msg = e.to_string();
        match e {
            Refusal::NoToken => Self::InvalidEnrollmentToken(msg),
            Refusal::Token(e) => e.into(),
            // OpenZiti answers an ottca chain with CERTIFICATE_FAILED_VALIDATION and a
            // CA auto-enrollment chain with CERT_FAILED_VALIDATION; a leaf that verified
            // but does not parse here is CERTIFICATE_FAILED_VALIDATION for both, as it was.
            Refusal::NoClientCertificate(Method::Ca)
            | Refusal::Chain {
                method: Method::Ca, ..
            } => Self::CertFailedValidation(msg),
            Refusal::NoClientCertificate(_)
            | Refusal::Chain { .. }
            | Refusal::UnparsableCertificate(_) => Self::CertificateFailedValidation(msg),
            Refusal::TokenCaGone | Refusal::TokenCaNotUsable => Self::EnrollmentCaNotValid(msg),
            Refusal::Name(AutoNameError::Template(_)) => Self::InvalidCommonName(msg),
            Refusal::Name(AutoNameError::TooLong | AutoNameError::Name(_)) => {
                Self::InvalidName(msg)
            }
        }
    }
}

impl From<crate::token::session::SessionError> for ApiError {
    fn from(e: crate::token::session::SessionError) -> Self {
        Self::Unhandled(e.to_string())
    }
}

impl From<CsrError> for ApiError {
    fn from(e: CsrError) -> Self {
        Self::CouldNotProcessCsr(e.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        Self::InvalidName(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::Enroll(inner) => inner.into(),
            StoreError::NameInUse(_) | StoreError::CaNameInUse(_) => Self::NameInUse(msg),
            StoreError::CertInUse => Self::CertInUse(msg),
            StoreError::NotFound(_) => Self::NotFound(msg),
            StoreError::InvalidState(_) => Self::InvalidState(msg),
            StoreError::CaExists => Self::CaExists(msg),
            StoreError::CaAlreadyVerified => Self::CaAlreadyVerified(msg),
            StoreError::CaNotUsable(_) => Self::EnrollmentCaNotValid(msg),
            StoreError::Disabled(_) => Self::IdentityDisabled(msg),
            StoreError::CertRevoked(_) => Self::CertRevoked(msg),
            StoreError::Busy => Self::RateLimited {
                message: msg,
                retry_after: 1,
            },
            StoreError::ShuttingDown | StoreError::Unavailable(_) => Self::ServiceUnavailable(msg),
            StoreError::Db(_)
            | StoreError::Corrupt(_)
            | StoreError::Absent
            | StoreError::Locked(_) => Self::Unhandled(msg),
        }
    }
}

impl From<crate::pki::batch::SignError> for ApiError {
    fn from(e: crate::pki::batch::SignError) -> Self {
        use crate::pki::batch::SignError;
        match e {
            SignError::Csr(inner) => inner.into(),
            SignError::Busy => Self::RateLimited {
                message: "the gateway is signing at capacity; retry shortly".into(),
                retry_after: 1,
            },
            SignError::Stopped => Self::ServiceUnavailable("the gateway is shutting down".into()),
            SignError::Issue(inner) => Self::Unhandled(inner.to_string()),
        }
    }
}

impl From<crate::app::Refused> for ApiError {
    fn from(r: crate::app::Refused) -> Self {
        let what = match r.limit {
            "source" => "from this address",
            _ => "through this CA",
        };
        Self::RateLimited {
            message: format!("too many enrollment requests {what}; retry later"),
            retry_after: crate::admission::retry_after_secs(r.wait),
        }
    }
}

/// Refuses a method on a known path; `allow` lists the methods it takes ("GET, POST").
pub(crate) fn method_not_allowed(req: &crate::http::Request, allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed {
        message: format!(
            "{} is not allowed on {}; use {allow}",
            req.head.method, req.head.path
        ),
        allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_codes_and_statuses() {
        let cases = [
            (
                ApiError::InvalidEnrollmentToken(String::new()),
                400,
                "INVALID_ENROLLMENT_TOKEN",
            ),
            (
                ApiError::EnrollmentExpired(String::new()),
                400,
                "ENROLLMENT_EXPIRED",
            ),
            (
                ApiError::InvalidEnrollMethod(String::new()),
                400,
                "INVALID_ENROLL_METHOD",
            ),
            (
                ApiError::CouldNotProcessCsr(String::new()),
                400,
                "COULD_NOT_PROCESS_CSR",
            ),
            (ApiError::CertInUse(String::new()), 409, "CERT_IN_USE"),
            (
                ApiError::IdentityDisabled(String::new()),
                403,
                "IDENTITY_DISABLED",
            ),
            (ApiError::CertRevoked(String::new()), 403, "CERT_REVOKED"),
            (
                ApiError::UnsupportedMedia(String::new()),
                415,
                "UNSUPPORTED_MEDIA",
            ),
            (
                ApiError::RateLimited {
                    message: String::new(),
                    retry_after: 1,
                },
                429,
                "RATE_LIMITED",
            ),
            (ApiError::Unhandled(String::new()), 500, "UNHANDLED"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status_and_code(), (status, code));
        }
    }

    #[test]
    fn enroll_errors_map_to_their_codes() {
        let code = |e: EnrollError| ApiError::from(e).status_and_code().1;
        assert_eq!(code(EnrollError::UnknownToken), "INVALID_ENROLLMENT_TOKEN");
        assert_eq!(
            code(EnrollError::Expired {
                expired_at: String::new()
            }),
            "ENROLLMENT_EXPIRED"
        );
        assert_eq!(
            code(EnrollError::WrongMethod(String::new())),
            "INVALID_ENROLL_METHOD"
        );
    }

    #[test]
    fn a_taken_name_says_whether_an_identity_or_a_ca_holds_it() {
        for (e, message) in [
            (
                StoreError::NameInUse("x".into()),
                "an identity named 'x' already exists",
            ),
            (
                StoreError::CaNameInUse("x".into()),
                "a CA named 'x' already exists",
            ),
        ] {
            let e = ApiError::from(e);
            assert_eq!(e.status_and_code(), (409, "NAME_IN_USE"));
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn store_busy_is_rate_limited_not_a_500() {
        let e = ApiError::from(StoreError::Busy);
        assert_eq!(e.status_and_code(), (429, "RATE_LIMITED"));
    }

    #[test]
    fn envelope_shape() {
        let v = ApiError::NotFound("no such identity".into()).envelope("r1");
        assert_eq!(v["error"]["code"], "NOT_FOUND");
        assert_eq!(v["error"]["message"], "no such identity");
        assert_eq!(v["error"]["requestId"], "r1");
        assert!(v["meta"].is_object());
        let v = ApiError::Unhandled(
            "IO error: /var/lib/enrollgate/store/000123.log: No space left on device".into(),
        )
        .envelope("r2");
        let text = v.to_string();
        assert!(
            !text.contains("/var/lib") && !text.contains("No space"),
            "{text}"
        );
        assert_eq!(v["error"]["requestId"], "r2");
    }
}
