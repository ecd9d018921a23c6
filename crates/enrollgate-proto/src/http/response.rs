//! Responses: status, content type, body, serialized with `Content-Length`, `Date` and
//! `Connection`.

use std::time::SystemTime;

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            // A serde_json::Value always serializes.
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// `{"data": data, "meta": {}}` with status 200.
    pub fn data(data: serde_json::Value) -> Self {
        Self::json(200, &serde_json::json!({ "data": data, "meta": {} }))
    }

    /// A response of any type.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The bytes on the wire. `head_only` omits the body (HEAD requests). A `204` has
    /// neither body nor `Content-Type`/`Content-Length` (RFC 9110 §8.6, §15.3.5).
    pub fn serialize(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let content = if self.status == 204 {
            String::new()
        } else {
            format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            )
        };
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n{content}Date: {}\r\nConnection: {}\r\n",
                self.status,
                reason(self.status),
                httpdate::fmt_http_date(SystemTime::now()),
                if keep_alive { "keep-alive" } else { "close" },
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && self.status != 204 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase of a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Response::data(serde_json::json!({"x": 1})).with_header("Retry-After", "1".into());
        let text = String::from_utf8(r.serialize(false, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"data\":{\"x\":1},\"meta\":{}}"));
        let head = String::from_utf8(r.serialize(true, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert_eq!(r.body.len(), 26);
    }

    #[test]
    fn a_204_has_no_body_type_or_length() {
        let r = Response::bytes(204, "application/csrattrs", b"ignored".to_vec());
        let text = String::from_utf8(r.serialize(true, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(
            !text.contains("Content-Length") && !text.contains("Content-Type"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
