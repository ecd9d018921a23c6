//! What an enrollment request asks for, read from its HTTP request before anything is
//! looked up: the method, the token, the CSR and the form the chain is wanted in, or the
//! name a `ca` enrollment asks for. The routes are OpenZiti's (`POST /enroll?method=...`
//! and `POST /enroll/{method}`, docs/openziti-api.md); a refusal says what was wrong.

use std::borrow::Cow;

use serde::Deserialize;

use crate::http::body::{self, BodyError, Untyped};
use crate::http::query::param;
use crate::http::Request;
use crate::model::Method;

/// Media types accepted for a CSR body (and none at all). The spec's `enroll` lists
/// `application/pkcs7` too; OpenZiti's controller reads it as it reads `text/plain`.
pub const CSR_MEDIA_TYPES: [&str; 4] = [
    "text/plain",
    "application/x-pem-file",
    "application/pkcs10",
    "application/pkcs7",
];

/// The enrollment routes of the client API (the path below its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/enroll`: the method in the query (`?method=`; none is `ott`), the token in the
    /// query, the CSR as the body or the `clientCsr` of a JSON body.
    Enroll,
    /// `/enroll/ott`: a JSON body `{token, clientCsr}`.
    Ott,
    /// `/enroll/ottca`: a JSON body `{token}`.
    Ottca,
    /// `/enroll/ca`: an optional JSON body `{name}`.
    Ca,
}

impl Endpoint {
    /// The enrollment route at `path`, if it is one.
    pub fn of(path: &str) -> Option<Self> {
        Some(match path {
            "/enroll" => Endpoint::Enroll,
            "/enroll/ott" => Endpoint::Ott,
            "/enroll/ottca" => Endpoint::Ottca,
            "/enroll/ca" => Endpoint::Ca,
            _ => return None,
        })
    }

    /// The method a request to this route enrolls with. `method` is optional in the spec;
    /// a missing (or empty) one is `ott`, the method every client that leaves it out means.
    /// (OpenZiti's controller takes the method of the token's enrollment instead: the same
    /// for an ott token; an ottca token without its method is refused with a message
    /// naming it.)
    pub fn method(self, query: &str) -> Result<Method, RequestError> {
        match self {
            Endpoint::Ott => Ok(Method::Ott),
            Endpoint::Ottca => Ok(Method::Ottca),
            Endpoint::Ca => Ok(Method::Ca),
            Endpoint::Enroll => {
                let name = param(query, "method").unwrap_or_default();
                if name.is_empty() {
                    return Ok(Method::Ott);
                }
                Method::parse(&name)
                    .ok_or_else(|| RequestError::UnknownMethod(name.chars().take(32).collect()))
            }
        }
    }
}

/// The form an `ott` enrollment's certificate chain is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainForm {
    /// `{"data":{"cert","ca"}}`.
    Json,
    /// The PEM chain itself, for a client that accepts `application/x-pem-file` and not
    /// JSON (OpenZiti's C SDK).
    Pem,
}

/// An enrollment request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRequest<'a> {
    /// A one-time token redeemed with a CSR.
    Ott {
        /// The token, as sent (checked by [`super::plan::token`]).
        token: Option<String>,
        /// The CSR body: PEM (or what claims to be; decoded by `pki::csr::decode_body`).
        csr: Cow<'a, [u8]>,
        /// The form of the answer.
        form: ChainForm,
    },
    /// A one-time token redeemed with the client certificate of the token's CA.
    Ottca {
        /// The token, as sent.
        token: Option<String>,
    },
    /// Auto-enrollment by the client certificate of a CA that allows it.
    Ca {
        /// The name asked for (`[requestedName]` in the CA's name format), not empty.
        requested_name: Option<String>,
    },
}

/// Why an enrollment request is refused as it is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `?method=` names no enrollment method (at most 32 characters of it).
    #[error("unknown enrollment method '{0}': use ott, ottca or ca")]
    UnknownMethod(String),
    /// A JSON `ott` body without its CSR.
    #[error("the JSON body has no 'clientCsr' field")]
    NoCsr,
    /// A CSR sent as a type no CSR is (at most 64 characters of it).
    #[error(
        "content type '{0}' is not accepted for a CSR; send text/plain, application/x-pem-file, \
         application/pkcs10, application/pkcs7 or application/json ({{\"clientCsr\": PEM}})"
    )]
    CsrMediaType(String),
    /// A JSON body that is not JSON, or not of its shape.
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// Reads the enrollment request `req` makes of `endpoint`.
pub fn parse(endpoint: Endpoint, req: &Request) -> Result<EnrollRequest<'_>, RequestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OttBody {
        token: Option<String>,
        client_csr: Option<String>,
    }
    #[derive(Deserialize)]
    struct OttcaBody {
        token: Option<String>,
    }
    let query = req.head.query.as_str();
    Ok(match (endpoint, endpoint.method(query)?) {
        (Endpoint::Enroll, Method::Ott) => EnrollRequest::Ott {
            token: param(query, "token"),
            csr: ott_csr(req)?,
            form: if req.head.accepts("application/x-pem-file")
                && !req.head.accepts("application/json")
            {
                ChainForm::Pem
            } else {
                ChainForm::Json
            },
        },
        // The body carries nothing for ottca (OpenZiti's C SDK sends none, or a JSON
        // identity with a name) and is not read.
        (Endpoint::Enroll, Method::Ottca) => EnrollRequest::Ottca {
            token: param(query, "token"),
        },
        (Endpoint::Ott, _) => {
            let b: OttBody = body::json(req, Untyped::Json)?;
            EnrollRequest::Ott {
                token: b.token,
                csr: Cow::Owned(b.client_csr.ok_or(RequestError::NoCsr)?.into_bytes()),
                form: ChainForm::Json,
            }
        }
        (Endpoint::Ottca, _) => EnrollRequest::Ottca {
            token: body::json::<OttcaBody>(req, Untyped::Json)?.token,
        },
        (Endpoint::Enroll | Endpoint::Ca, _) => EnrollRequest::Ca {
            requested_name: requested_name(req)?,
        },
    })
}

/// The optional `{"name": ...}` body of a `ca` enrollment. As in OpenZiti, a body sent as
/// another type than JSON (older clients send `text/plain`, often empty) carries no name;
/// a body without a type is read as JSON (empty: no name). The name is not checked here:
/// it matters only where the CA's name format has `[requestedName]`, and the name that
/// format gives is checked whole (`super::auto_enrolled_identity`); elsewhere it is
/// ignored, as in OpenZiti.
pub fn requested_name(req: &Request) -> Result<Option<String>, RequestError> {
    #[derive(Deserialize)]
    struct CaBody {
        name: Option<String>,
    }
    match req.head.content_type().as_deref() {
        None | Some("application/json") => {}
        Some(_) => return Ok(None),
    }
    let b: CaBody = body::json(req, Untyped::Json)?;
    Ok(b.name.filter(|n| !n.is_empty()))
}

/// The CSR of an `ott` enrollment on `/enroll`: the body itself (PEM, sent as one of the
/// spec's non-JSON types or without a type), or `clientCsr` of a JSON body (the spec's
/// `genericEnroll`; the token stays in the query string, where the spec puts it).
fn ott_csr(req: &Request) -> Result<Cow<'_, [u8]>, RequestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct GenericEnroll {
        client_csr: Option<String>,
    }
    if req.head.content_type().as_deref() == Some("application/json") {
        let b: GenericEnroll = body::json(req, Untyped::Json)?;
        return Ok(Cow::Owned(
            b.client_csr.ok_or(RequestError::NoCsr)?.into_bytes(),
        ));
    }
    check_csr_media(req)?;
    Ok(Cow::Borrowed(&req.body))
}

/// Refuses a CSR body sent as a type no CSR is ([`CSR_MEDIA_TYPES`], or none).
pub fn check_csr_media(req: &Request) -> Result<(), RequestError> {
    match req.head.content_type() {
        None => Ok(()),
        Some(t) if CSR_MEDIA_TYPES.contains(&t.as_str()) => Ok(()),
        Some(t) => Err(RequestError::CsrMediaType(t.chars().take(64).collect())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn request(target: &str, headers: &str, body: &str) -> Request {
        let raw = format!("POST {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        match crate::http::parse_head(raw.as_bytes()) {
            Ok(crate::http::Parsed::Complete(head, _)) => Request {
                head,
                body: body.as_bytes().to_vec(),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_generic_route_reads_the_method_from_the_query() {
        let ott = request("/enroll?token=t1", "", "PEM");
        assert_eq!(
            parse(Endpoint::Enroll, &ott).unwrap(),
            EnrollRequest::Ott {
                token: Some("t1".into()),
                csr: Cow::Borrowed(b"PEM".as_slice()),
                form: ChainForm::Json,
            }
        );
        let ottca = request("/enroll?method=ottca&token=t2", "", "ignored {");
        assert_eq!(
            parse(Endpoint::Enroll, &ottca).unwrap(),
            EnrollRequest::Ottca {
                token: Some("t2".into())
            }
        );
        let ca = request(
            "/enroll?method=ca",
            "Content-Type: application/json\r\n",
            r#"{"name":"dev"}"#,
        );
        assert_eq!(
            parse(Endpoint::Enroll, &ca).unwrap(),
            EnrollRequest::Ca {
                requested_name: Some("dev".into())
            }
        );
        let unknown = request(&format!("/enroll?method={}", "x".repeat(100)), "", "");
        assert_eq!(
            parse(Endpoint::Enroll, &unknown),
            Err(RequestError::UnknownMethod("x".repeat(32)))
        );
    }

    #[test]
    fn an_ott_csr_comes_from_the_body_or_client_csr() {
        let pem_wanted = request(
            "/enroll?token=t",
            "Accept: application/x-pem-file\r\nContent-Type: application/pkcs10\r\n",
            "PEM",
        );
        assert!(matches!(
            parse(Endpoint::Enroll, &pem_wanted).unwrap(),
            EnrollRequest::Ott {
                form: ChainForm::Pem,
                ..
            }
        ));
        let json = request(
            "/enroll?token=t",
            "Content-Type: application/json\r\n",
            r#"{"clientCsr":"PEM"}"#,
        );
        assert!(matches!(
            parse(Endpoint::Enroll, &json).unwrap(),
            EnrollRequest::Ott { csr, .. } if *csr == *b"PEM"
        ));
        let no_csr = request("/enroll", "Content-Type: application/json\r\n", "{}");
        assert_eq!(parse(Endpoint::Enroll, &no_csr), Err(RequestError::NoCsr));
        let image = request("/enroll", "Content-Type: image/png\r\n", "PEM");
        assert_eq!(
            parse(Endpoint::Enroll, &image),
            Err(RequestError::CsrMediaType("image/png".into()))
        );
        let body = request("/enroll/ott", "", r#"{"token":"t","clientCsr":"PEM"}"#);
        assert_eq!(
            parse(Endpoint::Ott, &body).unwrap(),
            EnrollRequest::Ott {
                token: Some("t".into()),
                csr: Cow::Borrowed(b"PEM".as_slice()),
                form: ChainForm::Json,
            }
        );
        assert_eq!(
            parse(
                Endpoint::Ott,
                &request("/enroll/ott", "", r#"{"token":"t"}"#)
            ),
            Err(RequestError::NoCsr)
        );
        assert!(matches!(
            parse(Endpoint::Ott, &request("/enroll/ott", "", "not json")),
            Err(RequestError::Body(BodyError::Invalid(_)))
        ));
    }

    #[test]
    fn a_ca_body_of_another_type_carries_no_name() {
        let text = request("/enroll/ca", "Content-Type: text/plain\r\n", "anything");
        assert_eq!(
            parse(Endpoint::Ca, &text).unwrap(),
            EnrollRequest::Ca {
                requested_name: None
            }
        );
        let empty_name = request("/enroll/ca", "", r#"{"name":""}"#);
        assert_eq!(
            parse(Endpoint::Ca, &empty_name).unwrap(),
            EnrollRequest::Ca {
                requested_name: None
            }
        );
        let not_json = request("/enroll/ca", "", "{");
        assert!(matches!(
            parse(Endpoint::Ca, &not_json),
            Err(RequestError::Body(BodyError::Invalid(_)))
        ));
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(Endpoint::of("/enroll/ottca"), Some(Endpoint::Ottca));
        assert_eq!(Endpoint::of("/enroll/"), None);
        assert_eq!(Endpoint::Enroll.method("method="), Ok(Method::Ott));
        assert_eq!(Endpoint::Enroll.method("method=ca"), Ok(Method::Ca));
        assert_eq!(Endpoint::Ottca.method("method=ca"), Ok(Method::Ottca));
    }
}
