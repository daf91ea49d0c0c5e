//! Wire formats. Each module parses its client format once, validates it, extracts the
//! routing [`crate::routing::Features`] and re-encodes the body for the provider.
//!
//! Only OpenAI Chat Completions is served so far; the Responses and Anthropic Messages
//! formats will join here, converting through a shared internal representation.

pub mod openai_chat;
