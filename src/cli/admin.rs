//! The management API as the CLI speaks it: a client authenticated by an admin identity
//! file ([`Admin`]), how its refusals read, where an enrollment JWT goes, and lookups by
//! name or id. Every management subcommand (`identity`, `ca`, `revocation`, `console`,
//! `renew`) uses it; none of them uses another.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::{AdminArgs, CliError};
use crate::client::{self, HttpResponse};
use crate::config::PublicUrl;
use crate::identity_file::{IdentityFile, PendingFile};

/// A management API client authenticated by an admin identity file.
pub struct Admin {
    config: Arc<rustls::ClientConfig>,
    endpoint: PublicUrl,
}

impl Admin {
    /// Loads the identity file.
    pub fn load(args: &AdminArgs) -> Result<Self, CliError> {
        let file = IdentityFile::read(&args.path()?)?;
        let config = client::config(
            &file.ca_certs()?,
            Some((file.cert_chain()?, file.private_key()?)),
        )?;
        Ok(Self {
            config,
            endpoint: file.endpoint()?,
        })
    }

    /// `https://host:port` of the gateway the identity file points at.
    pub fn origin(&self) -> String {
        self.endpoint.origin()
    }

    /// Calls the management API; returns the response if it is a success.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, CliError> {
        match body {
            Some(b) => self.call_raw(method, path, "application/json", b.to_string().as_bytes()),
            None => self.call_raw(method, path, "", b""),
        }
    }

    /// Calls the management API with a body of any type (`content_type` empty: none).
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<HttpResponse, CliError> {
        let resp = self.send(method, path, content_type, bytes)?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(refused(&resp))
    }

    /// Calls the management API; any status is returned.
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<HttpResponse, CliError> {
        let mut headers = vec![("Accept", "application/json")];
        if !content_type.is_empty() {
            headers.push(("Content-Type", content_type));
        }
        Ok(client::request(
            self.config.clone(),
            &self.endpoint.host,
            self.endpoint.port,
            method,
            &format!("{}{path}", crate::api::MANAGEMENT_PREFIX),
            &headers,
            bytes,
        )?)
    }

    /// `data` of a JSON success.
    pub fn data(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let v = self.call(method, path, body)?.json()?;
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Finds an identity by id, else by name. The id goes first: it is assigned by the
    /// gateway and never changes, while an auto-enrolled device may ask for a name, and
    /// a name equal to another identity's id must not redirect a command meant for that
    /// identity (a `delete` would remove the wrong one).
    pub fn resolve(&self, name_or_id: &str) -> Result<Value, CliError> {
        let id_shaped = crate::ids::is_well_formed(name_or_id);
        if id_shaped {
            // Only "no such id" falls back to names: any other failure is reported.
            let resp = self.send("GET", &format!("/identities/{name_or_id}"), "", b"")?;
            match resp.status {
                200 => return Ok(resp.json()?.get("data").cloned().unwrap_or(Value::Null)),
                404 => {}
                _ => return Err(refused(&resp)),
            }
        }
        let escaped = name_or_id.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("name = \"{escaped}\"");
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &filter)
            .finish();
        let list = self.data("GET", &format!("/identities?{q}"), None)?;
        if let Some(found) = list.as_array().and_then(|a| a.first()) {
            if id_shaped {
                eprintln!(
                    "note: no identity has the id '{name_or_id}'; using the identity named so ({})",
                    text(found, "id")
                );
            }
            return Ok(found.clone());
        }
        // The gateway knows no such identity: its answer, not a local failure.
        Err(CliError::refused(format!(
            "no identity named or with id '{name_or_id}'"
        )))
    }
}

/// The error for a management API answer that is not a success.
fn refused(resp: &HttpResponse) -> CliError {
    match resp.api_error() {
        Some((code, message)) => {
            CliError::refused(format!("the server refused: {code}: {message}"))
        }
        None => CliError::refused(format!("the server answered HTTP {}", resp.status)),
    }
}

/// Where an enrollment JWT goes: the `-o` file, its room taken (0600, refused if the file
/// exists) before anything changes on the server, so that a token is never made only to
/// be lost to a file that was already there, and removed if never written (the server
/// refused); or standard output.
pub struct JwtOut(Option<PendingFile>);

impl JwtOut {
    /// Takes the room of the `-o` file (none: standard output) before anything is asked.
    pub fn open(output: Option<&PathBuf>) -> Result<Self, CliError> {
        Ok(Self(output.map(|p| PendingFile::create(p)).transpose()?))
    }

    /// Writes `jwt` where it goes.
    pub fn write(self, jwt: &str) -> Result<(), CliError> {
        match self.0 {
            Some(file) => {
                let path = file.path().display().to_string();
                file.write_bytes(format!("{jwt}\n").as_bytes())
                    .map_err(|e| {
                        CliError::new(format!(
                            "{e}; the token was made: write it again with `enrollgate identity jwt NAME -o FILE`"
                        ))
                    })?;
                eprintln!("wrote {path}");
            }
            None => println!("{jwt}"),
        }
        Ok(())
    }

    /// Writes the `jwt` of an enrollment answer, after printing `note` to standard error.
    pub fn write_enrollment(self, answer: &Value, note: &str) -> Result<(), CliError> {
        let jwt = answer["jwt"]
            .as_str()
            .ok_or_else(|| CliError::new("the server returned no enrollment JWT"))?;
        eprintln!("{note}");
        self.write(jwt)
    }
}

/// A JSON field as display text (strings unquoted).
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Finds a CA by id, else by name.
pub fn resolve_ca(api: &Admin, name_or_id: &str) -> Result<Value, CliError> {
    let all = api.data("GET", "/cas", None)?;
    let list = all.as_array().cloned().unwrap_or_default();
    // The id first, as for identities: it never changes.
    list.iter()
        .find(|c| c["id"] == name_or_id)
        .or_else(|| list.iter().find(|c| c["name"] == name_or_id))
        .cloned()
        .ok_or_else(|| CliError::refused(format!("no CA named or with id '{name_or_id}'")))
}
