//! Writing responses downstream: the headers every response carries, errors, JSON bodies.
//!
//! Headers are gathered in a plain `http` header map ([`Head`]) and handed to Pingora in one
//! piece: Pingora's own `insert_header` parses and copies every name it is given (twice for a
//! name it does not know, as all the X-Flux-* ones), which made up a good part of a request's
//! allocations. The bytes on the wire are the same: Pingora titles the standard names it
//! knows (`Content-Type`) and writes the others as given, lowercase.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{ErrorType, OrErr};

use crate::errors::FluxError;
use crate::headers;
use crate::routing::{ModelId, Route, RouteTable};
use crate::wire::Format;

/// A response header being built.
pub struct Head(http::response::Parts);

impl Head {
    /// Set `name` (replacing any value it had), as `ResponseHeader::insert_header` does.
    pub fn insert_header<V>(&mut self, name: HeaderName, value: V) -> pingora::Result<()>
    where
        V: TryInto<HeaderValue>,
    {
        let value = value
            .try_into()
            .explain_err(ErrorType::InvalidHTTPHeader, |_| {
                "invalid value while insert"
            })?;
        self.0.headers.insert(name, value);
        Ok(())
    }

    /// The header for Pingora to write.
    pub fn into_response(self) -> Box<ResponseHeader> {
        Box::new(ResponseHeader::from(self.0))
    }
}

/// A response header with the request id and its mirrors, as every response has.
pub fn header(status: u16, request_id: &str) -> pingora::Result<Head> {
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(status)
        .explain_err(ErrorType::InvalidHTTPHeader, |_| "invalid status")?;
    parts.headers.reserve(12);
    let id = HeaderValue::from_str(request_id).explain_err(ErrorType::InvalidHTTPHeader, |_| {
        "invalid value while insert"
    })?;
    parts.headers.insert(headers::REQUEST_ID, id.clone());
    for mirror in headers::REQUEST_ID_MIRRORS {
        parts.headers.insert(mirror, id.clone());
    }
    Ok(Head(parts))
}

/// The header of a signed-in page's answer (the operator console, the owner's page) or of its
/// JSON API: never cached, never framed, no sniffing, no referrer.
pub fn page_header(status: u16, request_id: &str) -> pingora::Result<Head> {
    let mut h = header(status, request_id)?;
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert_header(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )?;
    }
    Ok(h)
}

/// What served a request, for the X-Flux-* headers and the access log.
pub struct Served<'a> {
    pub routes: &'a RouteTable,
    pub route: &'a Route,
    pub model: ModelId,
    pub original_model: &'a str,
}

impl Served<'_> {
    /// True unless the caller pinned exactly the model that answered.
    pub fn routed(&self) -> bool {
        self.route
            .pinned
            .is_none_or(|p| !self.routes.same_model(p, self.model))
    }

    pub fn add_headers(&self, h: &mut Head) -> pingora::Result<()> {
        let model = self.routes.model(self.model);
        h.insert_header(headers::MODEL, model.id.as_str())?;
        h.insert_header(headers::ORIGINAL_MODEL, self.original_model)?;
        h.insert_header(
            headers::ROUTED,
            HeaderValue::from_static(if self.routed() { "true" } else { "false" }),
        )?;
        h.insert_header(
            headers::LANE,
            self.routes.lane(self.route.lane).name.as_str(),
        )?;
        // `; target=latency`: what put the serving target first, when the lane spreads its
        // traffic and that target is the one it chose (not a fallback after it).
        let target = self
            .route
            .chosen
            .label()
            .filter(|_| self.route.candidates.first() == Some(&self.model));
        let rule = self.route.rule.map(|rule| &self.routes.rules()[rule].name);
        let value = match (rule, target) {
            (None, None) => return Ok(()),
            // The plain rule name, as most flux-auto answers carry: no formatting.
            (Some(name), None) if self.route.probability.is_none() && self.route.kept.is_none() => {
                return h.insert_header(headers::ROUTE_RULE, name.as_str());
            }
            (None, Some(target)) => format!("target={target}"),
            (Some(name), _) => {
                let mut v = match (self.route.probability, self.route.classifier_lane) {
                    // `classifier; deep p=0.91; plan: daily`: the classifier's own lane and
                    // how sure it was, then the lane the key's plan stepped the request to.
                    (Some(p), Some(wanted)) => format!(
                        "{name}; {} p={p:.2}; plan: {}",
                        self.routes.lane(wanted).name,
                        self.routes.lane(self.route.lane).name
                    ),
                    // `classifier; p=0.87`: how sure the classifier was of the lane.
                    (Some(p), None) => format!("{name}; p={p:.2}"),
                    (None, _) => name.clone(),
                };
                if let Some((why, wanted)) = self.route.kept {
                    // `classifier; p=0.81; kept=cache over express`: the conversation stayed
                    // on its lane instead of moving to the one the rule chose.
                    v.push_str("; kept=");
                    v.push_str(why.label());
                    v.push_str(" over ");
                    v.push_str(&self.routes.lane(wanted).name);
                }
                if let Some(target) = target {
                    v.push_str("; target=");
                    v.push_str(target);
                }
                v
            }
        };
        h.insert_header(headers::ROUTE_RULE, value)?;
        Ok(())
    }
}

/// Write a response header, with HSTS on a TLS listener that sets it.
pub async fn write_head(session: &mut Session, mut h: Head, end: bool) -> pingora::Result<()> {
    if let Some(value) = hsts(session) {
        h.0.headers
            .insert(http::header::STRICT_TRANSPORT_SECURITY, value);
    }
    session.write_response_header(h.into_response(), end).await
}

/// The listener's HSTS value, if the connection is TLS and the listener sets one.
fn hsts(session: &Session) -> Option<HeaderValue> {
    let digest = session.digest()?;
    digest.ssl_digest.as_ref()?;
    let local = digest.socket_digest.as_ref()?.local_addr()?.as_inet()?;
    crate::listener::hsts_for(*local)
}

/// Write a complete body with its length.
pub async fn send_body(
    session: &mut Session,
    mut h: Head,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    let content_type = match content_type {
        // The gateway's own types, without copying them.
        "application/json" => HeaderValue::from_static("application/json"),
        "text/plain" => HeaderValue::from_static("text/plain"),
        other => HeaderValue::from_str(other).explain_err(ErrorType::InvalidHTTPHeader, |_| {
            "invalid value while insert"
        })?,
    };
    h.insert_header(http::header::CONTENT_TYPE, content_type)?;
    h.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    write_head(session, h, body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write an error in the caller's wire format (`allow` lists the methods for a 405).
pub async fn send_error(
    session: &mut Session,
    request_id: &str,
    format: Format,
    err: &FluxError,
    allow: Option<&'static str>,
) -> pingora::Result<()> {
    let mut h = header(err.status(), request_id)?;
    if let Some(allow) = allow {
        h.insert_header(http::header::ALLOW, HeaderValue::from_static(allow))?;
    }
    if let Some(seconds) = err.retry_after {
        h.insert_header(http::header::RETRY_AFTER, HeaderValue::from(seconds))?;
    }
    h.insert_header(
        headers::SHOULD_RETRY,
        HeaderValue::from_static(if err.kind.retryable() {
            "true"
        } else {
            "false"
        }),
    )?;
    let body = format.error_body(err, request_id);
    send_body(session, h, "application/json", Bytes::from(body)).await
}
