//! Which endpoint a request path names (and the pairs of its query string), and for paths
//! not served, what the caller likely got wrong (the mistakes from the troubleshooting
//! guide).

use crate::errors::{ErrorKind, FluxError};
use crate::wire::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Models,
    /// `GET /v1/usage`: the caller's own plan, spend and limits.
    Usage,
    /// The management API, for an account's management key: `/v1/keys[/{id}[/rotate]]`,
    /// `/v1/account[/usage]` (each path checks its own methods).
    Manage,
    /// The account owner's page: `/account` and its JSON API `/account/api/…`, signed in
    /// with a management key (`gateway::account`).
    Account,
    AnthropicMessages,
    AnthropicCountTokens,
    Healthz,
    /// `/`: a plain liveness answer, like `/healthz`.
    Root,
    /// `/anthropic/api/hello`: Claude Code's preconnect probe (`HEAD`) when it starts.
    AnthropicHello,
}

impl Endpoint {
    /// Classify a path (query string already removed).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        Some(match path {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/responses" => Endpoint::Responses,
            "/v1/models" => Endpoint::Models,
            "/v1/usage" => Endpoint::Usage,
            "/anthropic/v1/messages" => Endpoint::AnthropicMessages,
            "/anthropic/v1/messages/count_tokens" => Endpoint::AnthropicCountTokens,
            "/healthz" => Endpoint::Healthz,
            "/" => Endpoint::Root,
            "/anthropic/api/hello" => Endpoint::AnthropicHello,
            "/v1/keys" | "/v1/account" => Endpoint::Manage,
            "/account" => Endpoint::Account,
            p if p.starts_with("/account/") => Endpoint::Account,
            p if p.starts_with("/v1/keys/") || p.starts_with("/v1/account/") => Endpoint::Manage,
            _ => return None,
        })
    }

    /// The methods the endpoint answers, as an `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Healthz | Endpoint::Root | Endpoint::AnthropicHello => "GET, HEAD",
            Endpoint::Models | Endpoint::Usage => "GET",
            Endpoint::Manage | Endpoint::Account => "GET, POST, PATCH, DELETE",
            _ => "POST",
        }
    }

    pub fn allows(self, method: &http::Method) -> bool {
        match self {
            Endpoint::Healthz | Endpoint::Root | Endpoint::AnthropicHello => {
                method == http::Method::GET || method == http::Method::HEAD
            }
            Endpoint::Models | Endpoint::Usage => method == http::Method::GET,
            Endpoint::Manage | Endpoint::Account => [
                http::Method::GET,
                http::Method::POST,
                http::Method::PATCH,
                http::Method::DELETE,
            ]
            .contains(method),
            _ => method == http::Method::POST,
        }
    }

    /// The wire format the endpoint speaks (its error bodies too).
    pub fn format(self) -> Format {
        match self {
            Endpoint::ChatCompletions => Format::OpenAiChat,
            Endpoint::Responses => Format::OpenAiResponses,
            Endpoint::AnthropicMessages
            | Endpoint::AnthropicCountTokens
            | Endpoint::AnthropicHello => Format::Anthropic,
            Endpoint::Models
            | Endpoint::Usage
            | Endpoint::Manage
            | Endpoint::Account
            | Endpoint::Healthz
            | Endpoint::Root => Format::OpenAiChat,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Responses => "responses",
            Endpoint::Models => "models",
            Endpoint::Usage => "usage",
            Endpoint::Manage => "manage",
            Endpoint::Account => "account",
            Endpoint::AnthropicMessages => "anthropic_messages",
            Endpoint::AnthropicCountTokens => "anthropic_count_tokens",
            Endpoint::Healthz => "healthz",
            Endpoint::Root => "root",
            Endpoint::AnthropicHello => "anthropic_hello",
        }
    }
}

/// Every route of the client listener, for a diagnosis to list (each path in it is
/// classified by [`Endpoint::from_path`]: a test holds them together).
const SERVED: &str =
    "FluxRouter serves POST /v1/chat/completions, POST /v1/responses, GET /v1/models, \
GET /v1/usage, POST /anthropic/v1/messages and POST /anthropic/v1/messages/count_tokens; \
with a management key, /v1/keys, /v1/keys/{id}, /v1/keys/{id}/rotate, /v1/account and \
/v1/account/usage; and the account owner's page, GET /account.";

/// The format whose error body the client on this path reads.
pub fn format_for(path: &str) -> Format {
    Endpoint::from_path(path).map_or_else(|| format_for_unknown(path), Endpoint::format)
}

/// The format a client on an unknown path most likely reads.
fn format_for_unknown(path: &str) -> Format {
    if path.contains("messages") || path.starts_with("/anthropic") {
        Format::Anthropic
    } else {
        Format::OpenAiChat
    }
}

/// A query string's `name=value` pairs, in order (empty ones skipped; a name without `=`
/// has an empty value). Not percent-decoded: the parameters read from it are months, ids,
/// names and numbers.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// 403 endpoint_not_served, diagnosing the usual base-URL mistakes.
pub fn not_served(path: &str) -> FluxError {
    let shown: String = path.chars().take(96).collect();
    let diagnosis = if path.starts_with("/v1/v1/") || path.starts_with("/anthropic/v1/v1/") {
        format!(
            "'{shown}' has a doubled /v1: your base URL already ends in /v1 and the client adds \
             another. Set the base URL without the trailing /v1."
        )
    } else if path.starts_with("/anthropic/") && !path.starts_with("/anthropic/v1/") {
        format!(
            "'{shown}' is missing /v1 after /anthropic: Anthropic clients use \
             /anthropic/v1/messages (set the base URL to http(s)://<host>/anthropic)."
        )
    } else if matches!(
        trimmed(path),
        "/v1/messages" | "/messages" | "/v1/messages/count_tokens" | "/messages/count_tokens"
    ) {
        format!(
            "'{shown}' is an Anthropic path without /anthropic: set your Anthropic base URL to \
             http(s)://<host>/anthropic so requests go to /anthropic/v1/messages."
        )
    } else if matches!(trimmed(path), "/chat" | "/v1/chat") {
        format!(
            "There is no bare /chat path ('{shown}'). Use POST /v1/chat/completions with an \
             OpenAI base URL of http(s)://<host>/v1."
        )
    } else if matches!(
        trimmed(path),
        "/chat/completions" | "/responses" | "/models" | "/completions" | "/usage" | "/keys"
    ) {
        format!(
            "'{shown}' is missing /v1: set your OpenAI base URL to http(s)://<host>/v1 so \
             requests go to /v1{}.",
            trimmed(path)
        )
    } else {
        format!("'{shown}' is not an endpoint.")
    };
    FluxError::new(
        ErrorKind::EndpointNotServed,
        format!("Endpoint not served: {diagnosis} {SERVED}"),
    )
}

fn trimmed(path: &str) -> &str {
    path.strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_paths_are_classified() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions/"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/anthropic/v1/messages"),
            Some(Endpoint::AnthropicMessages)
        );
        assert_eq!(Endpoint::from_path("/healthz"), Some(Endpoint::Healthz));
        assert_eq!(Endpoint::from_path("/"), Some(Endpoint::Root));
        assert_eq!(
            Endpoint::from_path("/anthropic/api/hello"),
            Some(Endpoint::AnthropicHello)
        );
        assert_eq!(Endpoint::from_path("/v1/v1/chat/completions"), None);
    }

    #[test]
    fn each_common_mistake_gets_its_diagnosis() {
        let cases = [
            ("/chat", "no bare /chat"),
            ("/chat/completions", "missing /v1"),
            ("/responses", "missing /v1"),
            ("/v1/v1/chat/completions", "doubled /v1"),
            ("/v1/messages", "without /anthropic"),
            ("/anthropic/messages", "missing /v1 after /anthropic"),
            ("/wp-admin", "is not an endpoint"),
            ("/keys", "missing /v1"),
            ("/acount", "is not an endpoint"),
        ];
        for (path, expect) in cases {
            let e = not_served(path);
            assert_eq!((e.status(), e.code()), (403, "endpoint_not_served"));
            assert!(e.message.contains(expect), "{path}: {}", e.message);
            assert!(
                e.message.contains("/v1/chat/completions"),
                "{path}: lists served paths"
            );
        }
        assert_eq!(format_for("/v1/messages"), Format::Anthropic);
        assert_eq!(format_for("/chat"), Format::OpenAiChat);
        assert_eq!(format_for("/anthropic/v1/messages"), Format::Anthropic);
        assert_eq!(format_for("/v1/responses"), Format::OpenAiResponses);
        // A mistyped path to the owner's page is told where the page is.
        assert!(not_served("/acount").message.contains("GET /account."));
    }

    #[test]
    fn every_route_a_diagnosis_lists_is_served() {
        let listed: Vec<&str> = SERVED
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .map(|w| w.trim_end_matches('.'))
            .filter(|w| w.starts_with('/'))
            .collect();
        assert!(listed.len() >= 12, "{listed:?}");
        for path in listed {
            let path = path.replace("{id}", "key_abc");
            assert!(
                Endpoint::from_path(&path).is_some(),
                "{path} is listed but not served"
            );
        }
        for served in ["/account", "/v1/keys/key_abc/rotate", "/v1/account/usage"] {
            assert!(SERVED.contains(served.replace("key_abc", "{id}").as_str()));
        }
    }
}
