//! The prototype's in-text tool protocol: an agent asks for a tool by
//! writing `[TOOL:name:parameter]` in its reply. The parameter runs to the
//! closing bracket and may itself contain colons (`SELECT ... '22:00'`).

/// One tool request found in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRequest {
    pub tool: String,
    pub parameter: String,
}

const OPENING: &str = "[TOOL:";

/// Every well-formed request in `reply`, in order. Malformed ones (no
/// closing bracket, no parameter) are not requests and are left as text.
pub fn parse_tool_requests(reply: &str) -> Vec<ToolRequest> {
    let mut requests = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find(OPENING) {
        let after = &rest[start + OPENING.len()..];
        let Some(end) = after.find(']') else { break };
        let inner = &after[..end];
        if let Some((tool, parameter)) = inner.split_once(':') {
            let (tool, parameter) = (tool.trim(), parameter.trim());
            if !tool.is_empty() && !parameter.is_empty() && !tool.contains(char::is_whitespace) {
                requests.push(ToolRequest {
                    tool: tool.to_string(),
                    parameter: parameter.to_string(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    requests
}

/// How to ask for tools, for the system prompt of an agent with `tools`.
/// With `native` calling the model is given function specs instead, and
/// only told that they exist.
pub fn tool_instructions(tools: &[String], documents: &[&str], native: bool) -> String {
    if tools.is_empty() {
        return "You have no tools.".into();
    }
    let mut text = if native {
        String::from("You may call the tools you are given (one string parameter each); the result reaches the crew after your turn. Your tools:\n")
    } else {
        String::from("To use a tool, write [TOOL:name:parameter] in your reply; the result reaches the crew after your turn. Your tools:\n")
    };
    for tool in tools {
        text.push_str(&format!("- {tool}: {}\n", describe_tool(tool, documents)));
    }
    text
}

/// What a tool's one parameter is, in words (for prompts and function specs).
pub fn describe_tool(tool: &str, documents: &[&str]) -> String {
    match tool {
        "calculator" => "an arithmetic expression with + - * / % ^ and parentheses, e.g. (3 * 45) + 120".to_string(),
        "file_reader" => format!("one document by name, one of: {}", documents.join(", ")),
        "database_query" => "one read-only SQL SELECT over the shift database (tables guards, shifts, access_levels)".to_string(),
        other => format!("the {other} tool's parameter"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_in_order_and_ignores_malformed_ones() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("no tools here", &[]),
            ("Let me check [TOOL:calculator:2 + 2] now", &[("calculator", "2 + 2")]),
            ("[TOOL:file_reader:vault_specs.txt] and [TOOL:database_query:SELECT * FROM shifts WHERE start_time >= '22:00']",
             &[("file_reader", "vault_specs.txt"), ("database_query", "SELECT * FROM shifts WHERE start_time >= '22:00'")]),
            ("[TOOL:calculator:] [TOOL::x] [TOOL:calculator 2] [TOOL:calculator:1", &[]),
            ("[TOOL: calculator : 7*6 ]", &[("calculator", "7*6")]),
            ("[TOOL:two words:x]", &[]),
        ];
        for (reply, expected) in cases {
            let parsed: Vec<(String, String)> = parse_tool_requests(reply)
                .into_iter()
                .map(|request| (request.tool, request.parameter))
                .collect();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(tool, parameter)| (tool.to_string(), parameter.to_string()))
                .collect();
            assert_eq!(parsed, expected, "{reply}");
        }
    }
}
