//! Per-request provider preferences, within the lane the key's plan allows: the body's
//! `provider` object (OpenRouter's shape, removed before the request is forwarded) or the
//! `X-Flux-Provider-*` headers. They filter and reorder the route's targets; they never add
//! a target the route did not have.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::{ErrorKind, FluxError};

use super::{Chosen, Route, RouteTable};

/// Entries in one list, and bytes in one name: a client names a handful of providers.
const MAX_ENTRIES: usize = 32;
const MAX_NAME: usize = 128;

/// What the client asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Providers (or pinned model ids) tried first, in this order; the rest after them.
    #[serde(default)]
    pub order: Vec<String>,
    /// Only these providers (or models).
    #[serde(default)]
    pub only: Vec<String>,
    /// Never these.
    #[serde(default)]
    pub ignore: Vec<String>,
    pub sort: Option<Sort>,
    /// `false`: the first target only, no fallback.
    pub allow_fallbacks: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Cheapest first (what the operator pays the provider: the request is billed at the
    /// lane's price whichever target serves).
    Price,
    /// Fastest first, by the latency estimate.
    Latency,
}

/// The `X-Flux-Provider-*` headers, as given (`order`, `only`, `ignore`: comma-separated).
#[derive(Debug, Default, Clone, Copy)]
pub struct Headers<'a> {
    pub order: Option<&'a [u8]>,
    pub only: Option<&'a [u8]>,
    pub ignore: Option<&'a [u8]>,
    pub sort: Option<&'a [u8]>,
    pub allow_fallbacks: Option<&'a [u8]>,
}

impl Headers<'_> {
    fn is_empty(&self) -> bool {
        self.order.is_none()
            && self.only.is_none()
            && self.ignore.is_none()
            && self.sort.is_none()
            && self.allow_fallbacks.is_none()
    }
}

fn invalid(message: String) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message)
}

impl Preferences {
    /// The body's `provider` object, then the headers for what it leaves unset. None when
    /// neither says anything.
    pub fn read(body: Option<&RawValue>, headers: &Headers<'_>) -> Result<Option<Self>, FluxError> {
        let body = body.filter(|v| v.get() != "null");
        if body.is_none() && headers.is_empty() {
            return Ok(None);
        }
        let mut p = match body {
            Some(v) => serde_json::from_str::<Preferences>(v.get()).map_err(|e| {
                invalid(format!(
                    "'provider' must be an object with order, only, ignore (lists of provider \
                     names), sort (\"price\" or \"latency\") and allow_fallbacks (a boolean): {e}"
                ))
            })?,
            None => Preferences::default(),
        };
        let list = |name: &str, v: &[u8]| -> Result<Vec<String>, FluxError> {
            let text = std::str::from_utf8(v)
                .map_err(|_| invalid(format!("X-Flux-Provider-{name} must be UTF-8")))?;
            Ok(text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect())
        };
        if p.order.is_empty() {
            if let Some(v) = headers.order {
                p.order = list("Order", v)?;
            }
        }
        if p.only.is_empty() {
            if let Some(v) = headers.only {
                p.only = list("Only", v)?;
            }
        }
        if p.ignore.is_empty() {
            if let Some(v) = headers.ignore {
                p.ignore = list("Ignore", v)?;
            }
        }
        if p.sort.is_none() {
            p.sort = match headers.sort.map(|v| v.trim_ascii()) {
                None => None,
                Some(b"price") => Some(Sort::Price),
                Some(b"latency") => Some(Sort::Latency),
                Some(_) => {
                    return Err(invalid(
                        "X-Flux-Provider-Sort must be price or latency".to_string(),
                    ))
                }
            };
        }
        if p.allow_fallbacks.is_none() {
            p.allow_fallbacks = match headers.allow_fallbacks.map(|v| v.trim_ascii()) {
                None => None,
                Some(b"true") => Some(true),
                Some(b"false") => Some(false),
                Some(_) => {
                    return Err(invalid(
                        "X-Flux-Provider-Allow-Fallbacks must be true or false".to_string(),
                    ))
                }
            };
        }
        for (name, list) in [
            ("order", &p.order),
            ("only", &p.only),
            ("ignore", &p.ignore),
        ] {
            if list.len() > MAX_ENTRIES || list.iter().any(|s| s.len() > MAX_NAME) {
                return Err(invalid(format!(
                    "provider.{name}: at most {MAX_ENTRIES} names of at most {MAX_NAME} bytes"
                )));
            }
        }
        Ok(Some(p))
    }

    /// Filter and reorder the route's targets. A name is a provider (as `GET /v1/models`
    /// lists it: `owned_by`) or a pinned model id.
    pub fn apply(&self, routes: &RouteTable, route: &mut Route) -> Result<(), FluxError> {
        for name in self.order.iter().chain(&self.only).chain(&self.ignore) {
            let known = routes.model_by_id(name).is_some()
                || routes.models().iter().any(|m| m.provider == *name);
            if !known {
                return Err(invalid(format!(
                    "provider preferences name '{}', which is neither a provider nor a model \
                     of this gateway",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
        let names = |m: usize, list: &[String]| {
            let model = routes.model(m);
            list.iter()
                .position(|n| *n == model.provider || *n == model.id)
        };
        let before = route.candidates.clone();
        route.candidates.retain(|&m| {
            (self.only.is_empty() || names(m, &self.only).is_some())
                && names(m, &self.ignore).is_none()
        });
        if route.candidates.is_empty() {
            let mut offered: Vec<&str> = before
                .iter()
                .map(|&m| routes.model(m).provider.as_str())
                .collect();
            offered.dedup();
            return Err(invalid(format!(
                "No target of lane '{}' is left by the provider preferences (only / ignore); \
                 its providers for this request: {}",
                routes.lane(route.lane).name,
                offered.join(", ")
            )));
        }
        match self.sort {
            Some(Sort::Price) => route.candidates.sort_by_key(|&m| {
                routes.model(m).cost_per_token.0 + routes.model(m).cost_per_token.1
            }),
            Some(Sort::Latency) => route.candidates.sort_by(|&a, &b| {
                let e = |m: usize| routes.model(m).stats.estimate(0);
                e(a).total_cmp(&e(b))
            }),
            None => {}
        }
        if !self.order.is_empty() {
            // Stable: named ones first in the named order, the others keep theirs.
            route
                .candidates
                .sort_by_key(|&m| names(m, &self.order).unwrap_or(usize::MAX));
        }
        if self.allow_fallbacks == Some(false) {
            route.candidates.truncate(1);
        }
        if route.candidates.first() != before.first()
            || self.sort.is_some()
            || !self.order.is_empty()
        {
            route.chosen = Chosen::Preference;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn the_body_comes_first_and_the_headers_fill_in() {
        let body = raw(r#"{"order": ["openai"], "sort": "latency"}"#);
        let headers = Headers {
            order: Some(b"google"),
            only: Some(b" openai , anthropic ,"),
            allow_fallbacks: Some(b"false"),
            ..Headers::default()
        };
        let p = Preferences::read(Some(&body), &headers).unwrap().unwrap();
        assert_eq!(p.order, ["openai"]);
        assert_eq!(p.only, ["openai", "anthropic"]);
        assert_eq!(p.sort, Some(Sort::Latency));
        assert_eq!(p.allow_fallbacks, Some(false));
        assert_eq!(Preferences::read(None, &Headers::default()).unwrap(), None);
        assert_eq!(
            Preferences::read(Some(&raw("null")), &Headers::default()).unwrap(),
            None
        );
    }

    #[test]
    fn bad_preferences_are_a_400_naming_what_is_wrong() {
        for (body, headers) in [
            (Some(r#"{"order": "openai"}"#), Headers::default()),
            (Some(r#"{"sort": "cheapest"}"#), Headers::default()),
            (Some(r#"{"quantizations": ["int8"]}"#), Headers::default()),
            (Some("[]"), Headers::default()),
            (
                None,
                Headers {
                    sort: Some(b"fast"),
                    ..Headers::default()
                },
            ),
            (
                None,
                Headers {
                    allow_fallbacks: Some(b"no"),
                    ..Headers::default()
                },
            ),
        ] {
            let body = body.map(raw);
            let e = Preferences::read(body.as_deref(), &headers).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{}", e.message);
        }
        let many = format!(r#"{{"ignore": [{}]}}"#, vec!["\"x\""; 33].join(","));
        assert!(Preferences::read(Some(&raw(&many)), &Headers::default()).is_err());
    }
}
