//! Request framing with `httparse`: the head is parsed from the bytes received so far;
//! "need more bytes" is its own outcome ([`Parsed::Partial`]), never an error.

/// Headers a request may carry at most.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (without `?`), empty when absent.
    pub query: String,
    /// HTTP/1.0 (0) or HTTP/1.1 (1).
    pub version: u8,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// How the body is framed.
    pub body: BodyKind,
    /// Whether the client asked to keep the connection open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl Head {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type`, lower-cased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// True when `Accept` lists `media` (lower-case).
    pub fn accepts(&self, media: &str) -> bool {
        self.header("accept").is_some_and(|v| {
            v.split(',').any(|part| {
                part.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case(media)
            })
        })
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// Exactly this many bytes follow the head.
    Length(usize),
    /// `Transfer-Encoding: chunked` (refused with 411 by the router).
    Chunked,
}

/// The outcome of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete; it took this many bytes.
    Complete(Head, usize),
    /// More bytes are needed.
    Partial,
}

/// Why a request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The bytes are not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// More than [`MAX_HEADERS`] headers.
    #[error("too many headers (at most {MAX_HEADERS})")]
    TooManyHeaders,
    /// `Content-Length` is not a number, or appears twice with different values, or is
    /// combined with `Transfer-Encoding` (request smuggling).
    #[error("invalid Content-Length: {0}")]
    BadLength(String),
}

/// Parses a request head from `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let version = req.version.unwrap_or(1);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    if !path.starts_with('/') {
        return Err(HeadError::Malformed(
            "the request target must be an absolute path".into(),
        ));
    }
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed(format!("header {} is not UTF-8", h.name)))?;
        out.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut connection_close = version == 0;
    let mut expect_continue = false;
    for (name, value) in &out {
        match name.as_str() {
            "content-length" => {
                let bad = || HeadError::BadLength(value.chars().take(32).collect());
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let n = value.parse::<usize>().map_err(|_| bad())?;
                if length.is_some_and(|m| m != n) {
                    return Err(HeadError::BadLength("conflicting values".into()));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                // Only `chunked` is understood (and then refused with 411); any other coding
                // would leave the body's end unknown.
                if value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else {
                    return Err(HeadError::Malformed(format!(
                        "unsupported Transfer-Encoding '{}'",
                        value.chars().take(32).collect::<String>()
                    )));
                }
            }
            "connection" => {
                for token in value.split(',') {
                    let t = token.trim();
                    if t.eq_ignore_ascii_case("close") {
                        connection_close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        connection_close = false;
                    }
                }
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if chunked && length.is_some() {
        return Err(HeadError::BadLength(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    let body = if chunked {
        BodyKind::Chunked
    } else {
        match length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    Ok(Parsed::Complete(
        Head {
            method,
            path,
            query,
            version,
            headers: out,
            body,
            keep_alive: !connection_close,
            expect_continue,
        },
        n,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes).unwrap() {
            Parsed::Complete(h, n) => (h, n),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn a_post_with_body_and_query() {
        let req = b"POST /edge/client/v1/enroll?method=ott&token=abc HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello";
        let (h, n) = complete(req);
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/edge/client/v1/enroll");
        assert_eq!(h.query, "method=ott&token=abc");
        assert_eq!(h.body, BodyKind::Length(5));
        assert_eq!(h.content_type().as_deref(), Some("text/plain"));
        assert!(h.keep_alive);
        assert_eq!(&req[n..], b"hello");
    }

    #[test]
    fn every_prefix_is_partial_not_an_error() {
        let req = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
        for i in 0..req.len() {
            assert_eq!(
                parse_head(&req[..i]).unwrap(),
                Parsed::Partial,
                "prefix {i}"
            );
        }
        assert!(matches!(parse_head(req).unwrap(), Parsed::Complete(..)));
    }

    #[test]
    fn connection_semantics() {
        let (h, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(matches!(
            parse_head(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(HeadError::BadLength(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(HeadError::BadLength(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadError::BadLength(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            Err(HeadError::BadLength(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn junk_is_malformed() {
        assert!(parse_head(b"\x16\x03\x01\x00\x05hello\r\n\r\n").is_err());
        assert!(parse_head(b"GET http://evil/ HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn accept_and_expect() {
        let (h, _) = complete(
            b"POST / HTTP/1.1\r\nAccept: application/json, application/x-pem-file;q=0.9\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(h.accepts("application/x-pem-file"));
        assert!(!h.accepts("text/html"));
        assert!(h.expect_continue);
    }
}
