"""The official OpenAI Python SDK against `freepool-mcp serve --port`.

Starts mock providers on loopback (the `mock_upstream` example), runs the
HTTP server in a scratch environment, and checks chat completions (plain
and streaming), the model list, a missing token (401) and a refused secret
(400 that does not echo it). Prints the server's address and token on
stdout's last line for the next steps of scripts/test, then leaves the
server running (its pid is on that line too).

Usage: python3 tests/sdk/check_http.py BINARY MOCK_BINARY SCRATCH_DIR
"""

import json
import os
import subprocess
import sys

import openai

PASSED = []


def check(cond, what, detail=""):
    if not cond:
        print(f"FAIL: {what}\n{detail}", file=sys.stderr)
        sys.exit(1)
    PASSED.append(what)


def main(binary, mock_binary, scratch):
    mock = subprocess.Popen([mock_binary, "alpha"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    urls = json.loads(mock.stdout.readline())
    config = os.path.join(scratch, "providers.toml")
    with open(config, "w") as f:
        f.write("[settings]\nkeyless = false\nmax_wait_secs = 0\n")
        f.write(
            f'[providers.alpha]\nbase_url = "{urls["alpha"]}"\nlocal = true\nkey_env = ["MOCK_KEY"]\n'
            '[providers.alpha.models.m1]\nfamily = "fam"\ncontext = 32000\ntier = 2\n'
        )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": scratch,
        "FREEPOOL_CONFIG": config,
        "FREEPOOL_STATE_DIR": os.path.join(scratch, "state"),
        "MOCK_KEY": "sdk-mock-key-value",
    }
    token = subprocess.run([binary, "serve", "--print-token"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    check(len(token) == 64, "serve --print-token makes a token", token)
    server = subprocess.Popen([binary, "serve", "--port", "0"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr = None
    for line in server.stderr:
        if "serving on http://" in line:
            addr = line.split("serving on http://")[1].split(" ")[0]
            break
    check(addr is not None, "serve --port says where it listens")
    # Keep draining stderr so the server never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()

    client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key=token, max_retries=0)
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello sdk"}])
    check(r.choices[0].message.content == "answer from alpha: hello sdk", "chat completion answered by the mock", r)
    check(r.model == "alpha/m1", "the served model is named", r.model)
    check(r.usage.total_tokens > 0, "usage is reported", r.usage)

    raw = client.chat.completions.with_raw_response.create(model="alpha/m1", messages=[{"role": "user", "content": "hdr"}])
    check(raw.headers.get("x-freepool-model") == "alpha/m1", "x-freepool-model header", dict(raw.headers))
    check("alpha/m1 ok" in raw.headers.get("x-freepool-attempts", ""), "x-freepool-attempts header", dict(raw.headers))

    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "stream sdk"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == "answer from alpha: stream sdk", "streamed answer", text)
    check(any(c.usage for c in chunks), "streamed usage chunk", chunks)

    ids = [m.id for m in client.models.list()]
    check(ids == ["alpha/m1"], "models.list", ids)

    try:
        openai.OpenAI(base_url=f"http://{addr}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}]
        )
        check(False, "a wrong token is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "a wrong token gets 401", e)

    secret = "ghp_" + "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2Y"
    try:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"use {secret}"}])
        check(False, "a secret is refused")
    except openai.BadRequestError as e:
        body = json.dumps(e.body)
        check(e.status_code == 400 and "GitHub token" in body, "a secret gets a 400 naming the rule", body)
        check(secret not in body and secret not in str(e), "the 400 does not echo the secret", body)

    print(f"{len(PASSED)} passed, 0 failed (OpenAI Python SDK {openai.__version__} against serve --port)", file=sys.stderr)
    print(json.dumps({"addr": addr, "token": token, "pid": server.pid, "mock_pid": mock.pid}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
