"""`llm generate` and `llm chat`: stream answers from the server to the terminal; `llm openai|soak|sweep|validate`."""

from __future__ import annotations

import argparse
import sys

from llm_client.client import LLMClient, RequestError, Result, ServerUnreachable

# The deployment guide's "stable output" preset (section 6.2): temperature 0.5-0.7, top_k 20-50,
# repetition_penalty > 1.0. Kept here as data so `llm chat --preset stable` needs no server change.
PRESETS = {
    "stable": {"temperature": 0.6, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1},
    "greedy": {"temperature": 0.0},
}


def _params(a: argparse.Namespace) -> dict:
    params = dict(PRESETS.get(a.preset, {})) if a.preset else {}
    for key in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "n"):
        value = getattr(a, key, None)
        if value is not None:
            params[key] = value
    if a.stop:
        params["stop"] = a.stop
    return params


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="server address (default localhost:8001 gRPC, localhost:8000 HTTP)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--model", default="llm")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", dest="top_k", type=int, default=None)
    p.add_argument("--top-p", dest="top_p", type=float, default=None)
    p.add_argument("--min-p", dest="min_p", type=float, default=None)
    p.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _client(a) -> LLMClient:
    url = a.url or ("localhost:8001" if a.protocol == "grpc" else "localhost:8000")
    return LLMClient(url, a.model, a.protocol)


def _stream_out(client: LLMClient, out, **kwargs) -> str:
    parts = []
    for chunk in client.stream(**kwargs):
        out.write(chunk.text)
        out.flush()
        parts.append(chunk.text)
    out.write("\n")
    return "".join(parts)


def _print_choices(result: Result, out) -> None:
    for c in result.choices:
        out.write(f"--- choice {c.index} (finish_reason: {c.finish_reason}, {c.num_output_tokens} tokens) ---\n")
        out.write(c.text + "\n")
    out.flush()


_DELEGATED = ("soak", "sweep", "openai", "validate")  # subcommands with parsers of their own


def _delegate(command: str, rest: list[str]) -> int:
    """The subcommand's own main, imported only when asked for (the OpenAI front pulls in an ASGI stack)."""
    if command == "openai":
        from llm_client.openai_server.cli import main as openai_main

        return openai_main(rest, prog="llm openai")
    if command == "soak":
        from llm_client.soak import main as sub_main
    elif command == "sweep":
        from llm_client.sweep import main as sub_main
    else:
        from llm_client.validate import main as sub_main
    return sub_main(rest)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm", description="Talk to the llm model on a Triton server.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("sweep", help="try config variants on fresh servers, best throughput under a P99 SLO")
    sub.add_parser("validate", help="load a live server with genai-perf and check a targets file (llm validate -h)")
    sub.add_parser("openai", help="serve an OpenAI-compatible HTTP API in front of Triton (llm openai -h)")
    sub.add_parser("soak", help="rounds of concurrent mixed requests checking nothing is lost (see llm soak -h)")
    g = sub.add_parser("generate", help="one answer, streamed unless --no-stream")
    g.add_argument("prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    g.add_argument("--no-stream", action="store_true")
    g.add_argument("--n", type=int, default=None,
                   help="answers to sample for the prompt (each with its own seeded stream: seed, seed+1, ...); "
                        "n > 1 prints every choice with its finish reason")
    _common(g)
    c = sub.add_parser("chat", help="interactive chat; history is kept and sent with each turn")
    c.add_argument("--system", default=None)
    _common(c)
    return ap


def _generate(client: LLMClient, a: argparse.Namespace) -> int:
    kwargs = {"messages": [{"role": "user", "content": a.prompt}]} if a.chat else {"prompt": a.prompt}
    if (a.n or 1) > 1:
        _print_choices(client.generate(**kwargs, stream=not a.no_stream, **_params(a)), sys.stdout)
    elif a.no_stream:
        print(client.generate(**kwargs, **_params(a)).text)
    else:
        _stream_out(client, sys.stdout, **kwargs, **_params(a))
    return 0


def _chat(client: LLMClient, a: argparse.Namespace) -> int:
    """Turns until end of input or /exit; the whole history goes with each."""
    history = [{"role": "system", "content": a.system}] if a.system else []
    while True:
        try:
            line = input("you> ")
        except EOFError:
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        sys.stdout.write("llm> ")
        answer = _stream_out(client, sys.stdout, messages=history, **_params(a))
        history.append({"role": "assistant", "content": answer})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    a = _parser().parse_args(argv)
    client = _client(a)
    try:
        return _generate(client, a) if a.command == "generate" else _chat(client, a)
    except ServerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RequestError as exc:
        print(f"error: the server refused the request: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
