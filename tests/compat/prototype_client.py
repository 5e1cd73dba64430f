"""Calls heistd's companion services the way the Python prototype's
orchestrator does (same paths, same JSON fields, standard library only),
so a test can prove the prototype still works against them.

Usage: prototype_client.py OAUTH MEMORY CALCULATOR FILE_READER DATABASE LLM_BASE
Exits 0 when every check passes; prints what failed otherwise.
"""

import json
import sys
import urllib.error
import urllib.request


def call(method, url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def status_of(method, url, body=None, token=None):
    """The HTTP status of a call that may be refused, and its JSON body."""
    try:
        return 200, call(method, url, body, token)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def main():
    oauth, memory, calculator, file_reader, database, llm = sys.argv[1:7]
    failures = []

    def check(condition, what):
        if not condition:
            failures.append(what)

    for name, base in [("oauth", oauth), ("memory", memory), ("calculator", calculator),
                       ("file_reader", file_reader), ("database_query", database)]:
        health = call("GET", f"{base}/health")
        check(health.get("status") == "healthy", f"{name} /health says {health}")

    grant = call("POST", f"{oauth}/token", {
        "grant_type": "client_credentials",
        "client_id": "planner",
        "client_secret": "planner-rehearsal-secret",
        "scope": "calculator:use file_reader:use database_query:use memory:write memory:read",
    })
    check(grant.get("token_type") == "bearer", f"token_type: {grant}")
    token = grant["access_token"]

    sum_reply = call("POST", f"{calculator}/tools/calculator", {"expression": "2 + 2"}, token)
    # The prototype's bug was reading a present "error" key as failure; the
    # reply carries "error": null on success, and "success" says it plainly.
    check(sum_reply.get("success") is True and sum_reply.get("error") is None, f"calculator: {sum_reply}")
    check(str(sum_reply.get("result")) == "4", f"calculator result: {sum_reply}")

    document = call("POST", f"{file_reader}/tools/read_file", {"filename": "vault_specs.txt"}, token)
    check(document.get("success") is True and "VAULT" in str(document.get("result")), f"read_file: {str(document)[:200]}")

    rows = call("POST", f"{database}/tools/query_db", {"query": "SELECT name FROM guards LIMIT 2"}, token)
    check(rows.get("success") is True and len(rows.get("result") or []) == 2, f"query_db: {rows}")

    memory_write = {
        "agent_id": "planner", "turn_id": 1, "message": "We go at dawn. Bring coffee.",
        "game_session_id": "heist_prototype_check",
    }
    # The prototype's orchestrator calls memory without a token: refused now.
    status, refused = status_of("POST", f"{memory}/tools/store_memory", memory_write)
    check(status == 401, f"store_memory without a token: {status} {refused}")
    status, refused = status_of("GET", f"{memory}/stats")
    check(status == 401, f"stats without a token: {status} {refused}")

    # With the agent's own token (memory:write, memory:read) it works, for
    # the agent's own memories only.
    stored = call("POST", f"{memory}/tools/store_memory", memory_write, token)
    check(stored.get("status") == "success", f"store_memory: {stored}")
    compressed = call("POST", f"{memory}/tools/get_compressed_memory", {
        "agent_id": "planner", "game_session_id": "heist_prototype_check", "max_tokens": 200, "recent_count": 3,
    }, token)
    check("We go at dawn" in (compressed.get("compressed_summary") or ""), f"compressed_summary: {compressed}")
    check(compressed.get("memories_count") == 1, f"memories_count: {compressed}")
    status, refused = status_of("POST", f"{memory}/tools/get_compressed_memory", {
        "agent_id": "mole", "game_session_id": "heist_prototype_check",
    }, token)
    check(status == 403, f"another agent's memories: {status} {refused}")
    status, refused = status_of("GET", f"{memory}/stats", token=token)
    check(status == 403, f"stats with an agent's token: {status} {refused}")
    operator = call("POST", f"{oauth}/token", {
        "grant_type": "client_credentials",
        "client_id": "operator",
        "client_secret": "operator-rehearsal-secret",
    })["access_token"]
    stats = call("GET", f"{memory}/stats", token=operator)
    check(stats.get("total_memories", 0) >= 1, f"stats: {stats}")

    models = call("GET", f"{llm}/models")
    check(any(model.get("id") == "heistd-rehearsal" for model in models.get("data", [])), f"models: {models}")
    completion = call("POST", f"{llm}/chat/completions", {
        "model": "heistd-rehearsal",
        "messages": [
            {"role": "system", "content": "You are the hacker of this crew."},
            {"role": "user", "content": "Turn 2 of 12. Your move."},
        ],
        "temperature": 0.7,
        "max_tokens": 300,
    })
    content = completion["choices"][0]["message"]["content"]
    check("[TOOL:" in content, f"completion asks for no tool: {content}")

    if failures:
        print("\n".join(failures))
        return 1
    print("prototype client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
