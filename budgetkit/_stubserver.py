"""The stub server behind :class:`budgetkit.testing.StubServer` (stdlib only).

Import it from :mod:`budgetkit.testing`; this module is private. It answers like the OpenAI
and Anthropic HTTP APIs, so the real SDK clients parse its answers exactly like the real
services' ones, offline.

Usage numbers are given as inclusive totals (input includes cache reads and
writes, output includes reasoning) and written in each API's own convention:
Anthropic's ``input_tokens`` excludes the cache counts.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final, Self

from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["StubServer", "StubUsage"]

Json = dict[str, Any]
Reply = str | Callable[[Json], "str | Json"]
UsageSpec = tuple[int, int] | Callable[[Json], tuple[int, int]] | None

_CREATED: Final = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed so bodies are reproducible


@dataclass(frozen=True, slots=True)
class StubUsage:
    """Inclusive token counts of one stub answer."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens neither read from nor written to the cache (Anthropic's input_tokens)."""
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens


class StubServer:
    """A local stand-in for the OpenAI and Anthropic HTTP APIs, for offline tests and demos.

    It serves, from a daemon thread, ``POST /v1/chat/completions`` (OpenAI Chat
    Completions), ``POST /v1/responses`` (OpenAI Responses) and ``POST /v1/messages``
    (Anthropic Messages), as JSON or, when the request has ``"stream": true``, as the
    server-sent events the real APIs send. Like the real API, a chat completion stream
    carries usage only when the request sets ``stream_options={"include_usage": True}``.
    Any API key is accepted. Point the real clients at it::

        import anthropic
        import openai

        from budgetkit.testing import StubServer

        question = [{"role": "user", "content": "Capital of France?"}]
        with StubServer(reply="Paris.", usage=(1_200, 300)) as stub:
            client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=question)
            claude = anthropic.Anthropic(base_url=stub.anthropic_base_url, api_key="test")
            message = claude.messages.create(
                model="claude-haiku-4-5", max_tokens=100, messages=question
            )
        assert answer.choices[0].message.content == message.content[0].text == "Paris."
        assert answer.usage.prompt_tokens == 1_200
        assert [path for path, _ in stub.requests] == ["/v1/chat/completions", "/v1/messages"]

    From the command line, ``budgetkit stub --port N`` serves one until Ctrl-C.

    Args:
        reply: the assistant's text, or a callable receiving the request JSON and
            returning the text or a complete JSON body to send verbatim (for
            non-streaming requests only, e.g. a body without usage). By default
            the reply echoes the last user message.
        usage: ``(input_tokens, output_tokens)``, inclusive, or a callable
            receiving the request JSON and returning them. By default they are
            estimated from the request and reply size (about 4 characters a token).
        cache_read_tokens: cached input tokens reported in every answer (part of input).
        cache_write_tokens: input tokens written to the cache (Anthropic and
            OpenAI ``cache_write_tokens``; part of input).
        reasoning_tokens: reasoning tokens reported (part of output).
        error_after: in streams, send an API error event after this many
            content events, as the real APIs do when they fail mid-stream.
        cut_after: in streams, close the connection after this many content
            events, without usage (an interrupted stream).
        host: the address to listen on (an IPv6 address works too).
        port: the port to listen on; ``0`` picks a free one (read it from :attr:`port`).

    Raises:
        BudgetTypeError: ``port`` is not an int.
        BudgetConfigError: ``port`` is not in 0-65535.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        reply: Reply | None = None,
        usage: UsageSpec = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        error_after: int | None = None,
        cut_after: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int):
            raise BudgetTypeError(f"port must be an int, got {port!r}")
        if not 0 <= port <= 65_535:
            raise BudgetConfigError(f"port must be from 0 to 65535, got {port!r}")
        self.host = host
        self._port = port
        self._answers = _Answers(
            reply,
            usage,
            cache_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
            error_after,
            cut_after,
        )
        self.requests: list[tuple[str, Json]] = self._answers.requests
        """Every request received, as ``(path, json_body)``, in order."""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        if self._server is None:
            msg = "StubServer is not running; use it as a context manager or call start()"
            raise RuntimeError(msg)
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The server's root: ``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI ``base_url`` (``$OPENAI_BASE_URL``): ``http://HOST:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Anthropic ``base_url`` (``$ANTHROPIC_BASE_URL``; the SDK appends ``/v1``)."""
        return self.url

    def start(self) -> Self:
        """Start serving in a daemon thread.

        Raises:
            OSError: the address cannot be listened on (the port is taken, say).
        """
        if self._server is not None:
            raise RuntimeError("StubServer is already running")
        handler = type("_BoundHandler", (_Handler,), {"answers": self._answers})
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="budgetkit-stubserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class _Answers:
    """What a :class:`StubServer` answers: its settings and the requests so far."""

    reply: Reply | None
    usage: UsageSpec
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    error_after: int | None
    cut_after: int | None
    requests: list[tuple[str, Json]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def record(self, path: str, body: Json) -> None:
        """Remember one request."""
        with self._lock:
            self.requests.append((path, body))

    def next_id(self) -> int:
        """A fresh number for response ids."""
        with self._lock:
            return next(self._ids)

    def reply_for(self, body: Json) -> str | Json:
        """The reply text (or verbatim body) for a request."""
        if self.reply is None:
            return f"Stub reply to: {_last_user_text(body)[:200]}"
        if isinstance(self.reply, str):
            return self.reply
        return self.reply(body)

    def usage_for(self, body: Json, text: str) -> StubUsage:
        """The usage to report for a request and its reply text."""
        if self.usage is None:
            input_tokens = max(1, math.ceil(len(json.dumps(body)) / 4))
            output_tokens = max(1, math.ceil(len(text) / 4))
        elif callable(self.usage):
            input_tokens, output_tokens = self.usage(body)
        else:
            input_tokens, output_tokens = self.usage
        input_tokens = max(input_tokens, self.cache_read_tokens + self.cache_write_tokens)
        output_tokens = max(output_tokens, self.reasoning_tokens)
        return StubUsage(
            input_tokens,
            output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many concurrent clients connect at once in tests and demos


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    answers: _Answers
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, _error("invalid JSON body"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error("the body must be a JSON object"))
            return
        self.answers.record(path, body)
        route = _ROUTES.get(path)
        if route is None:
            self._send_json(404, _error(f"no stub route for POST {path}"))
            return
        route(self, body)

    # -- transport -----------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Json) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, events: Iterator[tuple[str | None, Json | str]]) -> None:
        """Write server-sent events; the connection closes at the end of the stream."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            record = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
            try:
                self.wfile.write(record.encode())
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                return

    def _reply(self, body: Json) -> tuple[str | Json, str]:
        reply = self.answers.reply_for(body)
        return reply, reply if isinstance(reply, str) else ""

    def _content_events(self, pieces: list[str]) -> Iterator[tuple[int, str]]:
        """Yield the reply pieces; stop early for ``cut_after`` / ``error_after``."""
        for index, piece in enumerate(pieces):
            if self.answers.cut_after is not None and index >= self.answers.cut_after:
                raise _StreamCutError
            if self.answers.error_after is not None and index >= self.answers.error_after:
                raise _StreamFailedError
            yield index, piece

    # -- OpenAI chat completions -----------------------------------------------------------------

    def handle_chat_completions(self, body: Json) -> None:
        reply, text = self._reply(body)
        if not isinstance(reply, str):
            self._send_json(200, reply)
            return
        model = str(body.get("model", "gpt-4o-mini"))
        usage = self.answers.usage_for(body, text)
        completion_id = f"chatcmpl-stub{self.answers.next_id()}"
        if not body.get("stream"):
            self._send_json(200, _chat_completion(completion_id, model, text, usage))
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        self._send_events(
            self._chat_events(completion_id, model, text, usage, include_usage=include_usage)
        )

    def _chat_events(
        self, completion_id: str, model: str, text: str, usage: StubUsage, *, include_usage: bool
    ) -> Iterator[tuple[str | None, Json | str]]:
        def chunk(delta: Json, finish_reason: str | None) -> Json:
            data: Json = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return data

        yield None, chunk({"role": "assistant", "content": ""}, None)
        try:
            for _, piece in self._content_events(_pieces(text)):
                yield None, chunk({"content": piece}, None)
        except _StreamCutError:
            return
        except _StreamFailedError:
            yield (
                None,
                {
                    "error": {
                        "message": "stub: the server failed mid-stream",
                        "type": "server_error",
                    }
                },
            )
            return
        yield None, chunk({}, "stop")
        if include_usage:
            last: Json = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": model,
                "choices": [],
                "usage": _chat_usage(usage),
            }
            yield None, last
        yield None, "[DONE]"

    # -- OpenAI responses ----------------------------------------------------------------------

    def handle_responses(self, body: Json) -> None:
        reply, text = self._reply(body)
        if not isinstance(reply, str):
            self._send_json(200, reply)
            return
        model = str(body.get("model", "gpt-4o-mini"))
        usage = self.answers.usage_for(body, text)
        number = self.answers.next_id()
        response = _response(f"resp_stub{number}", f"msg_stub{number}", model, text, usage)
        if not body.get("stream"):
            self._send_json(200, response)
            return
        self._send_events(self._response_events(response, text))

    def _response_events(
        self, response: Json, text: str
    ) -> Iterator[tuple[str | None, Json | str]]:
        sequence = itertools.count()
        item = response["output"][0]
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        empty_item = {**item, "status": "in_progress", "content": []}
        empty_part = {"type": "output_text", "text": "", "annotations": []}

        def event(kind: str, **fields: Any) -> tuple[str, Json]:
            return kind, {"type": kind, "sequence_number": next(sequence), **fields}

        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        yield event("response.output_item.added", output_index=0, item=empty_item)
        yield event("response.content_part.added", **where, part=empty_part)
        try:
            for _, piece in self._content_events(_pieces(text)):
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        except _StreamCutError:
            return
        except _StreamFailedError:
            yield event("error", code="server_error", message="stub: failed mid-stream", param=None)
            return
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=item["content"][0])
        yield event("response.output_item.done", output_index=0, item=item)
        yield event("response.completed", response=response)

    # -- Anthropic messages --------------------------------------------------------------------

    def handle_messages(self, body: Json) -> None:
        reply, text = self._reply(body)
        if not isinstance(reply, str):
            self._send_json(200, reply)
            return
        model = str(body.get("model", "claude-haiku-4-5"))
        usage = self.answers.usage_for(body, text)
        message = _message(f"msg_stub{self.answers.next_id()}", model, text, usage)
        if not body.get("stream"):
            self._send_json(200, message)
            return
        self._send_events(self._message_events(message, text, usage))

    def _message_events(
        self, message: Json, text: str, usage: StubUsage
    ) -> Iterator[tuple[str | None, Json | str]]:
        start_usage = {**message["usage"], "output_tokens": 1}
        start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        yield "message_start", {"type": "message_start", "message": start}
        block_start = {"type": "text", "text": ""}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block_start},
        )
        yield "ping", {"type": "ping"}
        try:
            for _, piece in self._content_events(_pieces(text)):
                delta = {"type": "text_delta", "text": piece}
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
        except _StreamCutError:
            return
        except _StreamFailedError:
            error = {"type": "overloaded_error", "message": "stub: overloaded mid-stream"}
            yield "error", {"type": "error", "error": error}
            return
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        stop: Json = {"stop_reason": "end_turn", "stop_sequence": None}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": stop,
                "usage": {"output_tokens": usage.output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    # -- OpenAI legacy completions, embeddings; Anthropic token counting ----------------------

    def handle_completions(self, body: Json) -> None:
        """``POST /v1/completions`` (legacy text completions), JSON or events."""
        reply, text = self._reply(body)
        if not isinstance(reply, str):
            self._send_json(200, reply)
            return
        model = str(body.get("model", "gpt-3.5-turbo-instruct"))
        usage = _chat_usage(self.answers.usage_for(body, text))
        completion_id = f"cmpl-stub{self.answers.next_id()}"

        def completion(piece: str, finish_reason: str | None) -> Json:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish_reason}
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": _CREATED,
                "model": model,
                "choices": [choice],
            }

        if not body.get("stream"):
            self._send_json(200, {**completion(text, "stop"), "usage": usage})
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        events: list[tuple[str | None, Json | str]] = [
            (None, completion(piece, None)) for piece in _pieces(text)
        ]
        events.append((None, completion("", "stop")))
        if include_usage:
            events.append((None, {**completion("", None), "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._send_events(iter(events))

    def handle_embeddings(self, body: Json) -> None:
        """``POST /v1/embeddings``: one small vector per input; usage counts the input only."""
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        input_tokens = self.answers.usage_for(body, "").input_tokens
        self._send_json(
            200,
            {
                "object": "list",
                "model": str(body.get("model", "text-embedding-3-small")),
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]}
                    for i in range(count)
                ],
                "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
            },
        )

    def handle_count_tokens(self, body: Json) -> None:
        """``POST /v1/messages/count_tokens`` (Anthropic): the input tokens a request would use."""
        self._send_json(200, {"input_tokens": self.answers.usage_for(body, "").input_tokens})


_ROUTES: Final[dict[str, Callable[[_Handler, Json], None]]] = {
    "/v1/chat/completions": _Handler.handle_chat_completions,
    "/v1/responses": _Handler.handle_responses,
    "/v1/messages": _Handler.handle_messages,
    "/v1/completions": _Handler.handle_completions,
    "/v1/embeddings": _Handler.handle_embeddings,
    "/v1/messages/count_tokens": _Handler.handle_count_tokens,
}


class _StreamCutError(Exception):
    """Internal: stop the stream by closing the connection."""


class _StreamFailedError(Exception):
    """Internal: stop the stream with an API error event."""


def _chat_usage(usage: StubUsage) -> Json:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completion(completion_id: str, model: str, text: str, usage: StubUsage) -> Json:
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _chat_usage(usage),
        "service_tier": "default",
        "system_fingerprint": "fp_stub",
    }


def _response(response_id: str, item_id: str, model: str, text: str, usage: StubUsage) -> Json:
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "completed",
        "content": [part],
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": _CREATED,
        "status": "completed",
        "model": model,
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {
                "cached_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
            },
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }


def _message(message_id: str, model: str, text: str, usage: StubUsage) -> Json:
    thinking: Json | None = (
        {"thinking_tokens": usage.reasoning_tokens} if usage.reasoning_tokens else None
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.uncached_input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "output_tokens_details": thinking,
        },
    }


def _error(message: str) -> Json:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def _pieces(text: str) -> list[str]:
    """Split a reply into stream deltas, a word (with its leading space) each."""
    words = text.split(" ")
    return [words[0], *(f" {word}" for word in words[1:])] if text else [""]


def _last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message of a chat, responses or messages request."""
    prompt = body.get("input", body.get("messages"))
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        return ""
    for message in reversed(prompt):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part.get("text") for part in content if isinstance(part, Mapping))
        return " ".join(part for part in parts if isinstance(part, str))
    return ""
