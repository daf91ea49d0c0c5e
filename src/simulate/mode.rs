//! Failure modes and reply directives a test can ask the simulator for.
//!
//! A mode is named either by a `/_sim/<mode>/` segment of the request path (so a
//! gateway provider can simply be configured with a failing base URL such as
//! `http://127.0.0.1:P/_sim/fail500/v1`) or by a `[sim:<mode>]` directive in the
//! text of the last user message. The path takes precedence. A `/_sim/target=<name>/`
//! segment, before or after the mode's, names the simulated target the request
//! belongs to (its latency and prompt cache: `targets.rs`).
//!
//! The same `[sim:…]` syntax carries the directives that shape a normal answer:
//! `[sim:tool]`, `[sim:parallel]`, `[sim:call NAME {json}]` and `[sim:cached]`.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

/// Event spacing used by the bare `slow` mode.
const DEFAULT_SLOW_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMode {
    /// Answer with this status and an error body in the request's format
    /// (`fail500`, `fail503`, `fail429`, `fail401`).
    Fail(StatusCode),
    /// Answer normally, but space stream events this far apart (`slow`, `slow=<ms>`).
    Slow(Duration),
    /// Send part of a stream and then abort the connection: in the middle of an
    /// event's bytes (`cut`) or right after a whole event (`cut-clean`).
    Cut { mid_event: bool },
    /// Send part of a stream, then the format's in-stream error event, and end
    /// the stream cleanly (`error-event`). A non-streamed request gets a 500.
    ErrorEvent,
    /// Close the connection without any response once the request is read (`refuse`).
    Refuse,
    /// Read the request and never answer (`hang`).
    Hang,
}

impl SimMode {
    /// Parses a mode name; `None` for a name the simulator does not know.
    pub fn parse(name: &str) -> Option<SimMode> {
        let mode = match name {
            "fail500" => SimMode::Fail(StatusCode::INTERNAL_SERVER_ERROR),
            "fail503" => SimMode::Fail(StatusCode::SERVICE_UNAVAILABLE),
            "fail429" => SimMode::Fail(StatusCode::TOO_MANY_REQUESTS),
            "fail401" => SimMode::Fail(StatusCode::UNAUTHORIZED),
            "slow" => SimMode::Slow(DEFAULT_SLOW_DELAY),
            "cut" => SimMode::Cut { mid_event: true },
            "cut-clean" => SimMode::Cut { mid_event: false },
            "error-event" => SimMode::ErrorEvent,
            "refuse" => SimMode::Refuse,
            "hang" => SimMode::Hang,
            _ => {
                let millis = name.strip_prefix("slow=")?.parse::<u64>().ok()?;
                SimMode::Slow(Duration::from_millis(millis))
            }
        };
        Some(mode)
    }
}

/// Longest target name a `target=<name>` segment (or `/_sim/targets/<name>`) may carry.
pub const MAX_TARGET_NAME_LEN: usize = 32;

/// What the `/_sim/…/` segments of a request path ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimPath<'a> {
    /// The mode segment's name; the caller parses it (and answers an unknown one with a 400).
    pub mode: Option<&'a str>,
    /// The name of the `target=<name>` segment, already checked with [`is_target_name`].
    pub target: Option<&'a str>,
}

/// Why the `/_sim/…/` segments of a path cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPathError<'a> {
    /// `target=<name>` with a name that is not 1-32 characters of `[A-Za-z0-9_-]`.
    InvalidTarget(&'a str),
    /// Two mode segments, or two target segments.
    Repeated(&'a str),
}

/// Reads the `/_sim/…/` segments of `path`: after a `_sim` segment come a mode
/// (`/_sim/fail500/`), a target (`/_sim/target=b/`) or both, in either order. The first
/// segment after `_sim` always counts (an unknown mode there is a 400); a later one
/// counts when it is a `target=` segment or a known mode, so the base path that follows
/// (`v1`, …) is not mistaken for one. Every one must be followed by more path:
/// `/_sim/requests` is the recording endpoint, not a mode.
pub fn sim_path(path: &str) -> Result<SimPath<'_>, SimPathError<'_>> {
    let mut found = SimPath::default();
    let mut segments = path.split('/').peekable();
    if segments
        .by_ref()
        .find(|segment| *segment == "_sim")
        .is_none()
    {
        return Ok(found);
    }
    let mut first = true;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            break;
        }
        if let Some(name) = segment.strip_prefix("target=") {
            if !is_target_name(name) {
                return Err(SimPathError::InvalidTarget(name));
            }
            if found.target.replace(name).is_some() {
                return Err(SimPathError::Repeated(segment));
            }
        } else if first || SimMode::parse(segment).is_some() {
            if found.mode.replace(segment).is_some() {
                return Err(SimPathError::Repeated(segment));
            }
        } else {
            break;
        }
        first = false;
    }
    Ok(found)
}

/// A target name: 1 to [`MAX_TARGET_NAME_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn is_target_name(name: &str) -> bool {
    (1..=MAX_TARGET_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// One `[sim:…]` directive found in a user message.
#[derive(Debug, Clone, PartialEq)]
pub enum Directive<'a> {
    /// A failure or pacing mode (see [`SimMode`]).
    Mode(SimMode),
    /// `[sim:tool]`: call the first offered tool with `{"sim":true}`.
    Tool,
    /// `[sim:parallel]`: call the first two offered tools, in one turn.
    Parallel,
    /// `[sim:call NAME {json}]`: call NAME (when offered) with exactly these arguments
    /// (`{}` when none are given).
    Call {
        name: &'a str,
        arguments: Option<Value>,
    },
    /// `[sim:cached]`: Chat reports half the prompt as cached.
    Cached,
    /// Anything else between `[sim:` and `]`, for a 400 that names it.
    Unknown(&'a str),
}

/// Every `[sim:…]` directive in `text`, in order.
pub fn directives_in_text(text: &str) -> Vec<Directive<'_>> {
    const OPENING: &str = "[sim:";
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPENING) {
        let body = &rest[start + OPENING.len()..];
        let Some((directive, consumed)) = parse_directive(body) else {
            break; // no closing bracket: not a directive, and nothing after it is
        };
        found.push(directive);
        rest = &body[consumed..];
    }
    found
}

/// Parses the directive at the start of `body` (just after `[sim:`); returns it
/// and how many bytes it took, its `]` included.
fn parse_directive(body: &str) -> Option<(Directive<'_>, usize)> {
    let plain_end = body.find(']')?;
    let plain = body[..plain_end].trim();
    let unknown = Some((Directive::Unknown(plain), plain_end + 1));

    if let Some(after) = body.strip_prefix("call") {
        if !after.starts_with(char::is_whitespace) {
            return unknown;
        }
        let name_start = body.len() - after.trim_start().len();
        let name_len = body[name_start..]
            .find(|c: char| c.is_whitespace() || c == ']')
            .unwrap_or(body.len() - name_start);
        let name = &body[name_start..name_start + name_len];
        let args_start = name_start + name_len;
        let args_text = &body[args_start..];
        let trimmed = args_text.trim_start();
        let args_offset = args_start + (args_text.len() - trimmed.len());
        if name.is_empty() {
            return unknown;
        }
        if trimmed.starts_with(']') {
            let call = Directive::Call {
                name,
                arguments: None,
            };
            return Some((call, args_offset + 1));
        }
        // The arguments may hold `]` themselves: read one JSON value, then the bracket.
        let mut values = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        let Some(Ok(arguments @ Value::Object(_))) = values.next() else {
            return unknown;
        };
        let after_json = &trimmed[values.byte_offset()..];
        let closing = after_json.trim_start();
        if !closing.starts_with(']') {
            return unknown;
        }
        let consumed = args_offset + values.byte_offset() + (after_json.len() - closing.len()) + 1;
        let call = Directive::Call {
            name,
            arguments: Some(arguments),
        };
        return Some((call, consumed));
    }

    let directive = match plain {
        "tool" => Directive::Tool,
        "parallel" => Directive::Parallel,
        "cached" => Directive::Cached,
        name => match SimMode::parse(name) {
            Some(mode) => Directive::Mode(mode),
            None => Directive::Unknown(plain),
        },
    };
    Some((directive, plain_end + 1))
}

/// The mode asked for in `text`: `Ok(None)` when there is none, `Err(name)` for the
/// first directive the simulator does not know (which a 400 then names).
pub fn mode_in_text(text: &str) -> Result<Option<SimMode>, &str> {
    for directive in directives_in_text(text) {
        match directive {
            Directive::Mode(mode) => return Ok(Some(mode)),
            Directive::Unknown(name) => return Err(name),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_mode() {
        assert_eq!(
            SimMode::parse("fail500"),
            Some(SimMode::Fail(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(
            SimMode::parse("fail503"),
            Some(SimMode::Fail(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(
            SimMode::parse("fail429"),
            Some(SimMode::Fail(StatusCode::TOO_MANY_REQUESTS))
        );
        assert_eq!(
            SimMode::parse("slow"),
            Some(SimMode::Slow(Duration::from_millis(100)))
        );
        assert_eq!(
            SimMode::parse("slow=250"),
            Some(SimMode::Slow(Duration::from_millis(250)))
        );
        assert_eq!(
            SimMode::parse("fail401"),
            Some(SimMode::Fail(StatusCode::UNAUTHORIZED))
        );
        assert_eq!(
            SimMode::parse("cut"),
            Some(SimMode::Cut { mid_event: true })
        );
        assert_eq!(
            SimMode::parse("cut-clean"),
            Some(SimMode::Cut { mid_event: false })
        );
        assert_eq!(SimMode::parse("error-event"), Some(SimMode::ErrorEvent));
        assert_eq!(SimMode::parse("refuse"), Some(SimMode::Refuse));
        assert_eq!(SimMode::parse("hang"), Some(SimMode::Hang));
        assert_eq!(SimMode::parse("slow=fast"), None);
        assert_eq!(SimMode::parse("explode"), None);
    }

    fn mode_in_path(path: &str) -> Option<&str> {
        sim_path(path).expect("a valid path").mode
    }

    #[test]
    fn finds_mode_in_path() {
        assert_eq!(
            mode_in_path("/_sim/fail500/v1/chat/completions"),
            Some("fail500")
        );
        assert_eq!(
            mode_in_path("/openai/_sim/slow=50/v1/models"),
            Some("slow=50")
        );
        assert_eq!(mode_in_path("/_sim/requests"), None);
        assert_eq!(mode_in_path("/v1/chat/completions"), None);
        // The first segment is a mode even when unknown (the caller answers 400).
        assert_eq!(
            mode_in_path("/_sim/explode/v1/chat/completions"),
            Some("explode")
        );
    }

    #[test]
    fn finds_target_and_mode_in_either_order() {
        let both = SimPath {
            mode: Some("slow=100"),
            target: Some("b"),
        };
        assert_eq!(
            sim_path("/_sim/target=b/slow=100/v1/chat/completions"),
            Ok(both)
        );
        assert_eq!(
            sim_path("/_sim/slow=100/target=b/v1/chat/completions"),
            Ok(both)
        );
        assert_eq!(
            sim_path("/x/_sim/target=Az09_-/v1/messages"),
            Ok(SimPath {
                mode: None,
                target: Some("Az09_-")
            })
        );
        // After the first segment only targets and known modes count: the rest is base path.
        assert_eq!(
            sim_path("/_sim/target=b/v1/fail500/chat/completions"),
            Ok(SimPath {
                mode: None,
                target: Some("b")
            })
        );
        // The last segment is the route, never a mode or a target.
        assert_eq!(sim_path("/_sim/target=b"), Ok(SimPath::default()));
    }

    #[test]
    fn rejects_bad_target_names_and_repeated_segments() {
        let long = format!("/_sim/target={}/v1/chat/completions", "a".repeat(33));
        assert_eq!(
            sim_path(&long),
            Err(SimPathError::InvalidTarget(&long[13..46]))
        );
        assert!(sim_path(&long.replace("a".repeat(33).as_str(), &"a".repeat(32))).is_ok());
        assert_eq!(
            sim_path("/_sim/target=/v1/chat/completions"),
            Err(SimPathError::InvalidTarget(""))
        );
        assert_eq!(
            sim_path("/_sim/target=a.b/v1/chat/completions"),
            Err(SimPathError::InvalidTarget("a.b"))
        );
        assert_eq!(
            sim_path("/_sim/target=a/target=b/v1/chat/completions"),
            Err(SimPathError::Repeated("target=b"))
        );
        assert_eq!(
            sim_path("/_sim/slow/fail500/v1/chat/completions"),
            Err(SimPathError::Repeated("fail500"))
        );
        assert!(!is_target_name("é"));
        assert!(is_target_name("default"));
    }

    #[test]
    fn finds_mode_in_text() {
        assert_eq!(
            mode_in_text("please [sim:cut] now"),
            Ok(Some(SimMode::Cut { mid_event: true }))
        );
        assert_eq!(
            mode_in_text("[sim:slow=20]"),
            Ok(Some(SimMode::Slow(Duration::from_millis(20))))
        );
        // Reply directives are not modes; the first mode wins.
        assert_eq!(
            mode_in_text("[sim:tool] [sim:fail401] [sim:fail500]"),
            Ok(Some(SimMode::Fail(StatusCode::UNAUTHORIZED)))
        );
        assert_eq!(mode_in_text("[sim:tool] [sim:cached]"), Ok(None));
        assert_eq!(mode_in_text("no directive [sim:"), Ok(None));
        assert_eq!(mode_in_text("plain text"), Ok(None));
        assert_eq!(mode_in_text("[sim: explode ] [sim:cut]"), Err("explode"));
    }

    #[test]
    fn parses_reply_directives() {
        assert_eq!(
            directives_in_text("a [sim:tool] b [sim:parallel][sim:cached] c"),
            [Directive::Tool, Directive::Parallel, Directive::Cached]
        );
        // Arguments may hold brackets; the directive ends after the JSON value.
        assert_eq!(
            directives_in_text(r#"[sim:call Read {"path": "a]b", "n": [1]}] then [sim:tool]"#),
            [
                Directive::Call {
                    name: "Read",
                    arguments: Some(json!({"path": "a]b", "n": [1]}))
                },
                Directive::Tool
            ]
        );
        assert_eq!(
            directives_in_text("[sim:call  ls ]"),
            [Directive::Call {
                name: "ls",
                arguments: None
            }]
        );
        // Malformed calls are unknown directives (a 400 names them).
        assert_eq!(
            directives_in_text("[sim:call ls [1]]")[0],
            Directive::Unknown("call ls [1")
        );
        assert_eq!(
            directives_in_text("[sim:call] [sim:call ls {\"a\":1} x]"),
            [
                Directive::Unknown("call"),
                Directive::Unknown("call ls {\"a\":1} x")
            ]
        );
        assert_eq!(
            directives_in_text("[sim:callme]"),
            [Directive::Unknown("callme")]
        );
    }
}
