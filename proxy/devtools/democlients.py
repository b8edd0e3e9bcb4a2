"""
The clients `aibridge-proxy demo` runs, each in its own process, configured only by the
environment a user would set (HTTPS_PROXY, SSL_CERT_FILE, OPENAI_API_KEY, ANTHROPIC_API_KEY).

Prints one JSON line: what the client asked for, what it got, and how long it took.
"""

from __future__ import annotations

import json
import sys
import time

MESSAGES = [{"role": "user", "content": "Say hello."}]


def openai_chat() -> dict:
    import openai

    r = openai.OpenAI().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return {
        "url": "https://api.openai.com/v1/chat/completions",
        "reply": r.choices[0].message.content,
    }


def openai_stream() -> dict:
    import openai

    stream = openai.OpenAI().responses.create(model="gpt-4o-mini", input="Say hello.", stream=True)
    text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    return {"url": "https://api.openai.com/v1/responses", "reply": text, "stream": True}


def anthropic_stream() -> dict:
    import anthropic

    client = anthropic.Anthropic()
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
    return {"url": "https://api.anthropic.com/v1/messages", "reply": text, "stream": True}


CLIENTS = {
    "openai-chat": ("openai SDK, JSON", openai_chat),
    "openai-responses-stream": ("openai SDK, SSE", openai_stream),
    "anthropic-messages-stream": ("anthropic SDK, SSE", anthropic_stream),
}


def main(name: str) -> int:
    import anthropic  # noqa: F401 - imported before the clock starts: we time the request only
    import openai  # noqa: F401

    started = time.monotonic()
    try:
        result = CLIENTS[name][1]()
        result["status"] = 200
    except Exception as e:  # report the client's own error text in the table
        status = getattr(e, "status_code", None)
        result = {"status": status or "error", "reply": f"{type(e).__name__}: {e}"[:200]}
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
