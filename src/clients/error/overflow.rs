//! [`ContextOverflow`]: what a server's context-length refusal says (its
//! window, the prompt's size as it counted it), read once from the error
//! body when the reply comes in, the JSON fields first, then the words each
//! server uses. The bodies quoted in the tests are the servers' own.

use serde::Serialize;

/// A request refused because it does not fit the model's context window,
/// and what the server said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ContextOverflow {
    /// The server's window in tokens, when it names it (Ollama does not).
    pub window: Option<u32>,
    /// The prompt's tokens as the server counted them, when it says.
    pub prompt_tokens: Option<u32>,
    /// Prompt and completion together as the server counted them, when it
    /// says only that ("you requested T tokens"): the prompt is that less
    /// the request's `max_tokens`.
    pub requested_tokens: Option<u32>,
}

impl ContextOverflow {
    /// Reads an error body: llama.cpp's fields (`n_ctx`, `n_prompt_tokens`)
    /// when there, else the words of its message (`{"error": {"message":
    /// ..}}`, `{"error": ".."}`, or the whole body as text; see
    /// [`ContextOverflow::from_text`]).
    pub fn from_body(body: &[u8]) -> Option<Self> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self::from_text(&String::from_utf8_lossy(body));
        };
        let error = &value["error"];
        let number = |field: &str| {
            error[field]
                .as_u64()
                .and_then(|number| u32::try_from(number).ok())
        };
        if let Some(window) = number("n_ctx") {
            return Some(Self {
                window: Some(window),
                prompt_tokens: number("n_prompt_tokens"),
                requested_tokens: None,
            });
        }
        let message = error["message"]
            .as_str()
            .or_else(|| error.as_str())
            .or_else(|| value["message"].as_str())?;
        Self::from_text(message)
    }

    /// Reads a context-length error's words, in the forms servers send:
    /// - OpenAI, vLLM, llama-cpp-python: "maximum context length is N
    ///   tokens. However, you requested T tokens (P in the messages, C in
    ///   the completion)", or "... However, your messages resulted in P
    ///   tokens", or (OpenRouter) "... you requested about T tokens (P of
    ///   text input)";
    /// - llama.cpp's server: "request (P tokens) exceeds the available
    ///   context size (N tokens), try increasing it";
    /// - LM Studio, older: "Trying to keep the first P tokens when context
    ///   the overflows. However, the model is loaded with context length of
    ///   only N tokens, which is not enough."; newer: "The number of tokens
    ///   to keep from the initial prompt is greater than the context length
    ///   (n_keep: P>= n_ctx: N)."
    /// - Anthropic-style: "input length and `max_tokens` exceed context
    ///   limit: P + C > N";
    /// - Ollama: "the prompt is longer than the context length currently
    ///   available to the model; ..." (no numbers: the window must be asked
    ///   for).
    pub fn from_text(message: &str) -> Option<Self> {
        let text = message.to_ascii_lowercase();
        let known = |window, prompt_tokens| {
            Some(Self {
                window: Some(window),
                prompt_tokens,
                requested_tokens: None,
            })
        };
        if let Some(window) = number_after(&text, "maximum context length is ") {
            let prompt_tokens = number_before(&text, "(", " in the messages")
                .or_else(|| number_after(&text, "resulted in "))
                .or_else(|| number_before(&text, "(", " of text input"));
            let requested = number_after(&text, "you requested about ")
                .or_else(|| number_after(&text, "you requested "));
            return Some(Self {
                window: Some(window),
                prompt_tokens,
                requested_tokens: requested.filter(|_| prompt_tokens.is_none()),
            });
        }
        if let Some(window) = number_after(&text, "exceeds the available context size (") {
            return known(window, number_after(&text, "request ("));
        }
        if let Some(window) = number_after(&text, "context length of only ") {
            return known(window, number_after(&text, "keep the first "));
        }
        if let Some(window) = number_after(&text, ">= n_ctx: ") {
            return known(window, number_after(&text, "(n_keep: "));
        }
        if let Some(window) =
            number_after(&text, "exceed context limit: ").and_then(|_| number_after(&text, " > "))
        {
            return known(window, number_after(&text, "exceed context limit: "));
        }
        text.contains("the prompt is longer than the context length")
            .then_some(Self {
                window: None,
                prompt_tokens: None,
                requested_tokens: None,
            })
    }
}

/// The number right after the first `marker` in `text`.
fn number_after(text: &str, marker: &str) -> Option<u32> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let digits = rest
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// The number between an `open` and the first `close` after it, when it
/// is all that lies between them ("(2595 in the messages").
fn number_before(text: &str, open: &str, close: &str) -> Option<u32> {
    let end = text.find(close)?;
    let start = text[..end].rfind(open)? + open.len();
    text[start..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each server's refusal as it sends it: (where it comes from, the
    /// body, window, prompt tokens, requested tokens).
    #[allow(clippy::type_complexity)]
    const BODIES: [(&str, &str, Option<u32>, Option<u32>, Option<u32>); 10] = [
        (
            // Today's `llama-server` (issue #21), word for word.
            "llama.cpp",
            r#"{"error":{"code":400,"message":"request (2169 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":2169,"n_ctx":2048}}"#,
            Some(2048),
            Some(2169),
            None,
        ),
        (
            "llama.cpp's fields win over a message that disagrees",
            r#"{"error":{"code":400,"message":"too long (99 tokens)","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#,
            Some(4096),
            Some(5000),
            None,
        ),
        (
            "OpenAI, vLLM, llama-cpp-python",
            r#"{"error":{"message":"This model's maximum context length is 2048 tokens. However, you requested 2995 tokens (2595 in the messages, 400 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            Some(2048),
            Some(2595),
            None,
        ),
        (
            // webstudio-is/webstudio#4268.
            "OpenAI, the prompt alone",
            r#"{"error":{"message":"This model's maximum context length is 16385 tokens. However, your messages resulted in 19311 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            Some(16385),
            Some(19311),
            None,
        ),
        (
            // Not quoted from a server: the total without the breakdown.
            "OpenAI, the total alone",
            r#"{"error":{"message":"This model's maximum context length is 4097 tokens. However, you requested 4500 tokens. Please reduce your prompt; or completion length.","type":"invalid_request_error"}}"#,
            Some(4097),
            None,
            Some(4500),
        ),
        (
            // refly-ai/refly#1177.
            "OpenRouter",
            r#"{"error":{"message":"This endpoint's maximum context length is 32768 tokens. However, you requested about 42832 tokens (42832 of text input). Please reduce the length of either one, or use the \"middle-out\" transform to compress your prompt automatically.","code":400}}"#,
            Some(32768),
            Some(42832),
            None,
        ),
        (
            // As LM Studio 0.3.x answers (lmstudio-ai/lmstudio-bug-tracker
            // #237, #546): `{"error": ".."}`.
            "LM Studio, older",
            r#"{"error":"Trying to keep the first 10136 tokens when context the overflows. However, the model is loaded with context length of only 7866 tokens, which is not enough. Try to load the model with a larger context length, or provide a shorter input."}"#,
            Some(7866),
            Some(10136),
            None,
        ),
        (
            // As LM Studio answered in 2026 (Gitlawb/openclaude#353).
            "LM Studio, newer",
            r#"{"error":"The number of tokens to keep from the initial prompt is greater than the context length (n_keep: 13055>= n_ctx: 4096). Try to load the model with a larger context length, or provide a shorter input."}"#,
            Some(4096),
            Some(13055),
            None,
        ),
        (
            // continuedev/continue#6080.
            "Anthropic",
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}"#,
            Some(200000),
            Some(199759),
            None,
        ),
        (
            // ollama/ollama llm/llama_server.go (2026), through its OpenAI
            // layer's `NewError(400, ..)`: no numbers at all.
            "Ollama",
            r#"{"error":{"message":"the prompt is longer than the context length currently available to the model; shorten the prompt, adjust the context length in settings, or use a model with a longer context length","type":"invalid_request_error","param":null,"code":null}}"#,
            None,
            None,
            None,
        ),
    ];

    #[test]
    fn each_servers_refusal_says_its_window_and_the_prompts_size() {
        for (server, body, window, prompt_tokens, requested_tokens) in BODIES {
            assert_eq!(
                ContextOverflow::from_body(body.as_bytes()),
                Some(ContextOverflow {
                    window,
                    prompt_tokens,
                    requested_tokens
                }),
                "{server}"
            );
        }
    }

    #[test]
    fn the_error_built_from_a_400_carries_the_overflow_and_keeps_its_words() {
        let (_, body, ..) = BODIES[0];
        let error = super::super::status_error("llm", 400, body.as_bytes(), None);
        assert_eq!(
            error.to_string(),
            "llm: HTTP 400: request (2169 tokens) exceeds the available context size (2048 tokens), try increasing it"
        );
        let overflow = error.context_overflow().expect("an overflow");
        assert_eq!(
            (overflow.window, overflow.prompt_tokens),
            (Some(2048), Some(2169))
        );
        // The same words from a 500 are a failure, not a refusal to trim for.
        let failed = super::super::status_error("llm", 500, body.as_bytes(), None);
        assert_eq!(failed.context_overflow(), None);
    }

    #[test]
    fn a_plain_text_body_is_read_too_and_other_errors_are_not_overflows() {
        assert_eq!(
            ContextOverflow::from_body(b"Maximum context length is 700 tokens")
                .and_then(|overflow| overflow.window),
            Some(700)
        );
        for body in [
            r#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#,
            // Ollama's embedding refusal: not a chat prompt's.
            r#"{"error":"the input length exceeds the context length"}"#,
            r#"{"error":{"message":"request (12 tokens) is fine"}}"#,
            "not json",
            "",
        ] {
            assert_eq!(ContextOverflow::from_body(body.as_bytes()), None, "{body}");
        }
    }
}
