//! Putting a streamed reply together: the content, `tool_calls` and
//! `usage` pieces of server-sent chat-completion chunks become the whole
//! `ChatCompletion` a non-streaming server would have sent.

use crate::wire::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, FunctionCall, ToolCall,
    ToolCallDelta, FUNCTION_TYPE,
};

/// What a native tool call is put together from while a reply streams.
struct PartialCall {
    index: Option<usize>,
    id: Option<String>,
    name: String,
    arguments: String,
}

/// The reply a streamed one adds up to, as the server would have sent it
/// whole: the first choice's content and `finish_reason`, its tool calls'
/// name and argument pieces joined per call, the last `usage`.
pub(super) fn assemble(chunks: Vec<ChatCompletionChunk>) -> ChatCompletion {
    let mut content: Option<String> = None;
    let mut finish_reason = None;
    let mut usage = None;
    // In the order the calls began.
    let mut calls: Vec<PartialCall> = Vec::new();
    for chunk in chunks {
        usage = chunk.usage.or(usage);
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            finish_reason = choice.finish_reason.or(finish_reason);
            let Some(delta) = choice.delta else { continue };
            if let Some(piece) = delta.content {
                content.get_or_insert_with(String::new).push_str(&piece);
            }
            for piece in delta.tool_calls {
                add_tool_call_piece(&mut calls, piece);
            }
        }
    }
    let tool_calls = calls
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            kind: Some(FUNCTION_TYPE.into()),
            function: FunctionCall {
                name: call.name,
                arguments: call.arguments,
            },
        })
        .collect();
    ChatCompletion {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: None,
                content,
                tool_calls,
            },
            finish_reason,
        }],
        usage,
        ..ChatCompletion::default()
    }
}

/// Adds a streamed piece to the call it belongs to: the last one with its
/// index (without an index, the last one), unless the piece starts a call
/// of its own: it brings an id other than that call's, or a name when that
/// call is already whole (OpenAI sends a call's id and name once, in its
/// first piece; Ollama sends each call whole, all at index 0).
fn add_tool_call_piece(calls: &mut Vec<PartialCall>, piece: ToolCallDelta) {
    let (name, arguments) = piece
        .function
        .map(|function| (function.name, function.arguments))
        .unwrap_or_default();
    let joins = |call: &PartialCall| {
        let other_id = matches!((&piece.id, &call.id), (Some(new), Some(old)) if new != old);
        // A name piece after a call whose arguments are already whole JSON
        // (a name split over pieces comes before any argument).
        let second_name = name.is_some()
            && piece.id.is_none()
            && !call.name.is_empty()
            && serde_json::from_str::<serde::de::IgnoredAny>(&call.arguments).is_ok();
        !other_id && !second_name
    };
    let existing = match piece.index {
        Some(index) => calls.iter().rposition(|call| call.index == Some(index)),
        None => calls.len().checked_sub(1),
    }
    .filter(|position| joins(&calls[*position]));
    let position = existing.unwrap_or_else(|| {
        calls.push(PartialCall {
            index: piece.index,
            id: None,
            name: String::new(),
            arguments: String::new(),
        });
        calls.len() - 1
    });
    let call = &mut calls[position];
    if call.id.is_none() {
        call.id = piece.id;
    }
    call.name.push_str(&name.unwrap_or_default());
    call.arguments.push_str(&arguments.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::super::{model_reply, ModelReply};
    use super::*;

    fn chunks(events: &[&str]) -> Vec<ChatCompletionChunk> {
        events
            .iter()
            .map(|event| serde_json::from_str(event).expect("chunk parses"))
            .collect()
    }

    #[test]
    fn streamed_pieces_add_up_to_the_whole_reply() {
        let streamed = chunks(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Count"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"ing."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"calcu","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"file_reader","arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"lator","arguments":"{\"parameter\": \"2+"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"2\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":" \"plan.txt\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9}}"#,
        ]);
        let reply = model_reply(assemble(streamed));
        assert_eq!(
            reply,
            ModelReply {
                content: "Counting.".into(),
                tool_calls: vec![
                    ("calculator".into(), "2+2".into()),
                    ("file_reader".into(), "plan.txt".into()),
                ],
                prompt_tokens: Some(30),
                completion_tokens: Some(9),
                finish_reason: Some("tool_calls".into()),
                ..ModelReply::default()
            }
        );
    }

    #[test]
    fn calls_without_an_index_each_start_with_a_name_and_missing_usage_is_unknown() {
        let streamed = chunks(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"calculator","arguments":"{\"parameter\":\"1+1\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"calculator","arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"3*3\"}"}}]},"finish_reason":"stop"}]}"#,
        ]);
        let reply = model_reply(assemble(streamed));
        assert_eq!(
            reply.tool_calls,
            [
                ("calculator".to_string(), "1+1".to_string()),
                ("calculator".to_string(), "3*3".to_string())
            ]
        );
        assert_eq!(reply.content, "");
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (None, None));
        assert_eq!(model_reply(assemble(Vec::new())), ModelReply::default());
    }

    #[test]
    fn whole_calls_that_share_index_0_stay_separate_as_ollama_sends_them() {
        let two = |second_id: Option<&str>| {
            let id = second_id.map_or(String::new(), |id| format!(r#""id":"{id}","#));
            chunks(&[
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"calculator","arguments":"{\"parameter\":\"1+1\"}"}}]}}]}"#,
                &format!(
                    r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":0,{id}"function":{{"name":"calculator","arguments":"{{\"parameter\":\"3*3\"}}"}}}}]}},"finish_reason":"tool_calls"}}]}}"#
                ),
            ])
        };
        let expected = [
            ("calculator".to_string(), "1+1".to_string()),
            ("calculator".to_string(), "3*3".to_string()),
        ];
        // With its own id, and (some servers) with a name but no id.
        for second_id in [Some("call_b"), None] {
            let reply = model_reply(assemble(two(second_id)));
            assert_eq!(reply.tool_calls, expected, "{second_id:?}");
        }
        // OpenAI's way: id and name once, then argument pieces, same index.
        let openai = chunks(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"calculator","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"2*2\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        let reply = model_reply(assemble(openai));
        assert_eq!(
            reply.tool_calls,
            [("calculator".to_string(), "2*2".to_string())]
        );
    }
}
