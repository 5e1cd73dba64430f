//! The heist side of the prototype's in-text tool protocol: how an agent is
//! told to ask for tools (`[TOOL:name:parameter]` in its reply, or native
//! function calls) and what each tool's one parameter is. The notation
//! itself and its parser live in `wire`, which the rehearsal model shares.
//!
//! It only writes prompt text; it must not call tools or parse replies.

use crate::wire::Tool;

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
    match Tool::parse(tool) {
        Some(Tool::Calculator) => "an arithmetic expression with + - * / % ^ and parentheses, e.g. (3 * 45) + 120".to_string(),
        Some(Tool::FileReader) => format!("one document by name, one of: {}", documents.join(", ")),
        Some(Tool::DatabaseQuery) => "one read-only SQL SELECT over the shift database (tables guards, shifts, access_levels)".to_string(),
        None => format!("the {tool} tool's parameter"),
    }
}
