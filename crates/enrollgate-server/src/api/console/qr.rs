//! The QR code of an enrollment JWT, as SVG, so a phone's camera can take the token from
//! the console's screen. Drawn on the server with `qrcodegen` (Nayuki's reference encoder:
//! no dependencies, no `unsafe`), one path of unit squares, no script, no external
//! reference: the console shows it in an `<img>`, where SVG cannot run anything anyway.

use qrcodegen::{QrCode, QrCodeEcc};

/// Modules of white border on each side (the QR specification asks for 4).
const QUIET: i32 = 4;

/// Why a text has no QR code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the text is too long for a QR code ({0} bytes)")]
pub struct TooLong(pub usize);

/// The QR code of `text` as a standalone SVG document. Error correction `M` (15%): a JWT
/// of ~600 bytes fits in version 17 or so, still easy to scan from a screen.
pub fn svg(text: &str) -> Result<String, TooLong> {
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium).map_err(|_| TooLong(text.len()))?;
    let size = qr.size();
    let side = size + 2 * QUIET;
    let mut path = String::with_capacity((size * size) as usize * 4);
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET, y + QUIET));
            }
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" viewBox=\"0 0 {side} {side}\" \
         shape-rendering=\"crispEdges\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_sized_text_draws() {
        let text = "x".repeat(700);
        let s = svg(&text).unwrap();
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(s.contains("<path d=\"M"));
        assert!(!s.contains("<script"));
    }

    #[test]
    fn too_long_is_an_error() {
        assert_eq!(svg(&"x".repeat(5000)), Err(TooLong(5000)));
    }
}
