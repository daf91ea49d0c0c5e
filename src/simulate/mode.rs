//! Failure modes a test can ask the simulator for.
//!
//! A mode is named either by a `/_sim/<mode>/` segment of the request path (so a
//! gateway provider can simply be configured with a failing base URL such as
//! `http://127.0.0.1:P/_sim/fail500/v1`) or by a `[sim:<mode>]` directive in the
//! text of the last user message. The path takes precedence.

use std::time::Duration;

use http::StatusCode;

/// Event spacing used by the bare `slow` mode.
const DEFAULT_SLOW_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMode {
    /// Answer with this status and an OpenAI error body (`fail500`, `fail503`, `fail429`).
    Fail(StatusCode),
    /// Answer normally, but space stream events this far apart (`slow`, `slow=<ms>`).
    Slow(Duration),
    /// Send part of a stream and then abort the connection (`cut`).
    Cut,
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
            "slow" => SimMode::Slow(DEFAULT_SLOW_DELAY),
            "cut" => SimMode::Cut,
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

/// The mode named by a `/_sim/<mode>/` segment of `path`, if there is one.
///
/// The mode segment must be followed by more path: `/_sim/requests` is the
/// recording endpoint, not a mode.
pub fn mode_in_path(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    segments.by_ref().find(|segment| *segment == "_sim")?;
    let mode = segments.next()?;
    segments.next().map(|_| mode)
}

/// The mode named by the first `[sim:<mode>]` directive in `text`, if there is one.
pub fn mode_in_text(text: &str) -> Option<&str> {
    const OPENING: &str = "[sim:";
    let start = text.find(OPENING)? + OPENING.len();
    let length = text[start..].find(']')?;
    Some(text[start..start + length].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(SimMode::parse("cut"), Some(SimMode::Cut));
        assert_eq!(SimMode::parse("refuse"), Some(SimMode::Refuse));
        assert_eq!(SimMode::parse("hang"), Some(SimMode::Hang));
        assert_eq!(SimMode::parse("slow=fast"), None);
        assert_eq!(SimMode::parse("explode"), None);
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
    }

    #[test]
    fn finds_directive_in_text() {
        assert_eq!(mode_in_text("please [sim:cut] now"), Some("cut"));
        assert_eq!(mode_in_text("[sim:slow=20]"), Some("slow=20"));
        assert_eq!(mode_in_text("no directive [sim:"), None);
        assert_eq!(mode_in_text("plain text"), None);
    }
}
