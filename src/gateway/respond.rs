//! Writing responses downstream: the headers every response carries, errors, JSON bodies.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::errors::FluxError;
use crate::headers;
use crate::routing::{ModelId, Route, RouteTable};
use crate::wire::Format;

/// A response header with the request id and its mirrors, as every response has.
pub fn header(status: u16, request_id: &str) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(12))?;
    h.insert_header(headers::REQUEST_ID, request_id)?;
    for mirror in headers::REQUEST_ID_MIRRORS {
        h.insert_header(mirror, request_id)?;
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
        self.route.pinned != Some(self.model)
    }

    pub fn add_headers(&self, h: &mut ResponseHeader) -> pingora::Result<()> {
        let model = self.routes.model(self.model);
        h.insert_header(headers::MODEL, &model.id)?;
        h.insert_header(headers::ORIGINAL_MODEL, self.original_model)?;
        h.insert_header(
            headers::ROUTED,
            if self.routed() { "true" } else { "false" },
        )?;
        h.insert_header(headers::LANE, &self.routes.lane(self.route.lane).name)?;
        if let Some(rule) = self.route.rule {
            let name = &self.routes.rules()[rule].name;
            match self.route.probability {
                // `classifier; p=0.87`: how sure the classifier was of the lane.
                Some(p) => h.insert_header(headers::ROUTE_RULE, format!("{name}; p={p:.2}"))?,
                None => h.insert_header(headers::ROUTE_RULE, name)?,
            }
        }
        Ok(())
    }
}

/// Write a complete body with its length.
pub async fn send_body(
    session: &mut Session,
    mut h: ResponseHeader,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    h.insert_header(http::header::CONTENT_TYPE, content_type)?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(h), body.is_empty())
        .await?;
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
        h.insert_header(http::header::ALLOW, allow)?;
    }
    if let Some(seconds) = err.retry_after {
        h.insert_header(http::header::RETRY_AFTER, seconds.to_string())?;
    }
    h.insert_header(
        headers::SHOULD_RETRY,
        if err.kind.retryable() {
            "true"
        } else {
            "false"
        },
    )?;
    let body = format.error_body(err, request_id);
    send_body(session, h, "application/json", Bytes::from(body)).await
}
