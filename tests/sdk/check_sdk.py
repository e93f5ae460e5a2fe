"""An independent MCP client (the official Python SDK) against freepool-mcp.

Starts mock providers on loopback (the `mock_upstream` example), runs the
server over stdio in a scratch environment, calls every tool with real
arguments and checks what comes back. Exits non-zero on the first failure.

Usage: python3 tests/sdk/check_sdk.py BINARY MOCK_BINARY
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

PASSED = []


def check(cond, what, detail=""):
    if not cond:
        print(f"FAIL: {what}\n{detail}", file=sys.stderr)
        sys.exit(1)
    PASSED.append(what)


def attr(obj, snake, camel):
    """The SDK spells fields in snake_case (2.x) or camelCase (1.x)."""
    return getattr(obj, snake, None) if hasattr(obj, snake) else getattr(obj, camel, None)


def is_error(result):
    return bool(attr(result, "is_error", "isError"))


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def run(binary, mock_binary):
    mock = subprocess.Popen([mock_binary, "flaky-429", "alpha"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    urls = json.loads(mock.stdout.readline())
    tmp = tempfile.mkdtemp(prefix="freepool-sdk-")
    config = os.path.join(tmp, "providers.toml")
    with open(config, "w") as f:
        f.write("[settings]\nkeyless = false\nmax_wait_secs = 0\n")
        for name, url, prio in (("flaky", urls["flaky-429"], 10), ("alpha", urls["alpha"], 0)):
            f.write(
                f'[providers.{name}]\nbase_url = "{url}"\nlocal = true\nkey_env = ["MOCK_KEY"]\npriority = {prio}\n'
                f'[providers.{name}.models.m1]\nfamily = "fam"\ncontext = 32000\ntier = 2\n'
            )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": tmp,
        "FREEPOOL_CONFIG": config,
        "FREEPOOL_STATE_DIR": os.path.join(tmp, "state"),
        "MOCK_KEY": "sdk-mock-key-value",
    }
    payload = json.dumps({
        "session_id": "sdk",
        "rate_limits": {
            "five_hour": {"used_percentage": 12, "resets_at": 4102444800},
            "seven_day": {"used_percentage": 77.5, "resets_at": 4102444800},
        },
    })
    fed = subprocess.run([binary, "statusline"], input=payload, env=env, capture_output=True, text=True)
    check(fed.returncode == 0 and fed.stdout.startswith("pool: delegate_more"), "statusline capture", fed.stdout + fed.stderr)

    params = StdioServerParameters(command=binary, args=[], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            instructions = init.instructions or ""
            check(0 < len(instructions) <= 2048, "instructions within 2048 characters", instructions)
            check("Budget mode now: delegate_more" in instructions, "instructions carry the live budget mode", instructions)

            tools = await session.list_tools()
            names = [t.name for t in tools.tools]
            check(names == ["delegate", "fanout", "list_models", "claude_budget", "log_route_decision"], "tools/list", str(names))
            check(all(attr(t, "input_schema", "inputSchema").get("type") == "object" for t in tools.tools), "every input schema is an object")

            r = await session.call_tool("delegate", {"prompt": "Summarize: tests are good.", "gist": "summarize a sentence", "score": 2})
            t = text_of(r)
            check(not is_error(r) and t.startswith("[pool answer ") and "\nanswer from alpha: Summarize" in t, "delegate answers, inside a block marked untrusted", t)
            check("failed over from flaky/m1: 429 rate limited" in t, "delegate fails over on 429", t)
            check("decision " in t, "delegate logs the decision", t)

            seen = []

            async def on_progress(progress, total, message):
                seen.append((progress, total, message))

            tasks = [{"id": f"t{i}", "prompt": f"convert item {i} to JSON"} for i in range(5)]
            r = await session.call_tool("fanout", {"tasks": tasks, "concurrency": 2}, progress_callback=on_progress)
            t = text_of(r)
            check(not is_error(r) and t.startswith("fanout: 5 of 5 tasks ok"), "fanout runs every task", t)
            check(t.index("task t0") < t.index("task t4"), "fanout keeps input order", t)
            check(len(seen) == 5 and seen[-1][0] == 5 and seen[-1][1] == 5, "fanout sends progress notifications", str(seen))

            r = await session.call_tool("list_models", {})
            t = text_of(r)
            check(not is_error(r) and "alpha/m1" in t and "Auto context ceiling" in t, "list_models", t)

            r = await session.call_tool("claude_budget", {})
            t = text_of(r)
            check(not is_error(r) and "mode: delegate_more" in t and "weekly: 77% used" in t, "claude_budget reads the statusline capture", t)

            r = await session.call_tool("log_route_decision", {"gist": "design the cache layer", "route": "claude", "score": 8, "task_type": "architecture"})
            t = text_of(r)
            check(not is_error(r) and t.startswith("logged decision "), "log_route_decision", t)
            decision = int(t.split()[2])
            r = await session.call_tool("log_route_decision", {"decision_id": decision, "outcome": "accepted"})
            check(not is_error(r), "log_route_decision sets an outcome", text_of(r))

            secret = "sk-ant-api03-" + "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2YtR5wQ1zX7cV4bN6mK9jH3gF2dS8aP0oI" + "uYtReWq"
            r = await session.call_tool("delegate", {"prompt": f"debug this: ANTHROPIC_API_KEY={secret}"})
            t = text_of(r)
            check(is_error(r) and "refused" in t and "Anthropic API key" in t, "a secret is refused", t)
            check(secret[14:] not in t, "the refusal never echoes the secret", t)

    mock.stdin.close()
    mock.wait(timeout=10)
    print(f"{len(PASSED)} passed, 0 failed")


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2]))
