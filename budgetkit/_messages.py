"""Prompts and replies in the shape of the OpenTelemetry GenAI conventions (v1.41).

``gen_ai.input.messages`` and ``gen_ai.output.messages`` are lists of ``{role, parts}``
messages, ``gen_ai.system_instructions`` a list of parts; parts are ``{"type": "text",
"content": ...}``, ``{"type": "tool_call", "id", "name", "arguments"}``,
``{"type": "tool_call_response", "id", "response"}`` or ``{"type": "reasoning", "content"}``
(anything else is kept as a generic part). Read from the request (``messages=``,
``input=``/``instructions=``, ``system=``, ``contents=``, a LangChain message list, or a
single prompt string) and from the response (OpenAI chat completions and Responses,
Anthropic messages, Gemini ``generate_content``, LangChain ``AIMessage``), objects or dicts.

Every reader returns ``None`` for a shape it does not know; the caller then falls back to
recording the raw value. Only used with content capture on, except :func:`response_info`
(ids, model, finish reasons: no content).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "provider_of",
    "request_messages",
    "response_info",
    "response_messages",
    "response_reader",
]

_Parts = list[dict[str, Any]]
_Messages = list[dict[str, Any]]

#: Provider roles mapped to the conventions' (``system``, ``user``, ``assistant``, ``tool``).
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}

#: Provider finish reasons mapped to the conventions' values, for output messages.
_FINISH = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "completed": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "content_filter": "content_filter",
    "safety": "content_filter",
    "refusal": "content_filter",
    "recitation": "content_filter",
    "tool_calls": "tool_call",
    "tool_use": "tool_call",
    "function_call": "tool_call",
    "error": "error",
}


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` otherwise; ``None`` when absent."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _seq(value: Any) -> Sequence[Any] | None:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        return None
    return value


def _text(content: str) -> dict[str, Any]:
    return {"type": "text", "content": content}


def _json_args(value: Any) -> Any:
    """Tool-call arguments: a JSON string parsed when it is JSON, else kept."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _finish(reason: Any) -> str:
    text = str(getattr(reason, "value", reason) or "").lower()
    text = text.rsplit(".", 1)[-1]  # enum reprs such as "FinishReason.STOP"
    return _FINISH.get(text, text or "stop")


# ----------------------------------------------------------------------------- parts
def _part(item: Any) -> dict[str, Any] | None:
    """One content block of any provider as a conventional part (``None``: nothing to show)."""
    if isinstance(item, str):
        return _text(item)
    kind = _get(item, "type")
    if kind in ("text", "input_text", "output_text"):
        return _text(str(_get(item, "text") or _get(item, "content") or ""))
    if kind in ("tool_use", "function_call", "tool_call"):
        call_id = _get(item, "id") if kind == "tool_use" else _get(item, "call_id")
        return {
            "type": "tool_call",
            "id": call_id or _get(item, "id"),
            "name": str(_get(item, "name") or ""),
            "arguments": _json_args(_get(item, "input") or _get(item, "arguments") or {}),
        }
    if kind in ("tool_result", "function_call_output"):
        return {
            "type": "tool_call_response",
            "id": _get(item, "tool_use_id") or _get(item, "call_id"),
            "response": _get(item, "content") if kind == "tool_result" else _get(item, "output"),
        }
    if kind in ("thinking", "reasoning"):
        text = _get(item, "thinking") or _get(item, "text")
        if text is None:
            summary = _seq(_get(item, "summary")) or []
            text = "\n".join(str(_get(s, "text") or "") for s in summary)
        return {"type": "reasoning", "content": str(text or "")}
    text = _get(item, "text")  # Gemini parts have no type: {"text": ...}
    if isinstance(text, str):
        return _text(text)
    call = _get(item, "function_call")
    if call is not None:
        return {
            "type": "tool_call",
            "id": _get(call, "id"),
            "name": str(_get(call, "name") or ""),
            "arguments": _json_args(_get(call, "args") or {}),
        }
    response = _get(item, "function_response")
    if response is not None:
        return {
            "type": "tool_call_response",
            "id": _get(response, "id"),
            "response": _get(response, "response"),
        }
    if isinstance(kind, str):
        return {"type": kind}  # an image, audio, file...: recorded by type, not inlined
    return None


def _parts(content: Any) -> _Parts | None:
    if content is None:
        return []
    if isinstance(content, str):
        return [_text(content)]
    items = _seq(content)
    if items is None:
        part = _part(content)
        return None if part is None else [part]
    parts = [p for p in (_part(item) for item in items) if p is not None]
    return parts if parts or not items else None


# ----------------------------------------------------------------------------- requests
def _message(msg: Any) -> dict[str, Any] | None:
    """One request message (OpenAI, Anthropic, Responses, Gemini, LangChain) or ``None``."""
    if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str):
        role_name, content = msg  # LangChain's ("user", "text") shorthand
    else:
        role_name = _get(msg, "role") or _get(msg, "type")
        content = _get(msg, "content")
        if content is None:
            content = _get(msg, "parts")
        if role_name in ("function_call", "function_call_output"):  # Responses items
            part = _part(msg)
            role = "assistant" if role_name == "function_call" else "tool"
            return None if part is None else {"role": role, "parts": [part]}
        if role_name == "message":
            role_name = _get(msg, "role")
    if not isinstance(role_name, str):
        return None
    role = _ROLES.get(role_name.lower(), role_name.lower())
    parts = _parts(content)
    if parts is None:
        return None
    for call in _seq(_get(msg, "tool_calls")) or []:  # OpenAI / LangChain tool calls
        function = _get(call, "function") or call
        parts.append(
            {
                "type": "tool_call",
                "id": _get(call, "id"),
                "name": str(_get(function, "name") or ""),
                "arguments": _json_args(_get(function, "arguments") or _get(call, "args") or {}),
            }
        )
    if role == "tool":
        call_id = _get(msg, "tool_call_id")
        if call_id is not None:
            text = "".join(str(p.get("content", "")) for p in parts)
            parts = [{"type": "tool_call_response", "id": call_id, "response": text}]
    return {"role": role, "parts": parts}


def _messages(value: Any) -> _Messages | None:
    if isinstance(value, str):
        return [{"role": "user", "parts": [_text(value)]}]
    items = _seq(value)
    if items is None:
        message = _message(value)  # one Gemini Content, or one message
        return None if message is None else [message]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append({"role": "user", "parts": [_text(item)]})
            continue
        message = _message(item)
        if message is None:
            return None
        out.append(message)
    return out


def _system(value: Any) -> _Parts | None:
    if value is None:
        return None
    parts = _get(value, "parts")  # Gemini Content
    return _parts(parts if parts is not None else value)


def request_messages(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(system instructions or ``None``, input messages) of a call, or ``None`` when the
    call's shape is unknown.

    Keyword arguments first: ``messages=`` (OpenAI chat, Anthropic), ``input=`` (Responses,
    LangChain), ``contents=`` (Gemini), with ``system=`` (Anthropic), ``instructions=``
    (Responses) and ``config.system_instruction`` (Gemini). Else the positional arguments
    that are strings or message lists (a decorated ``ask(prompt)``; a LangChain
    ``invoke(messages)``): one string is the user's prompt, one list its messages.
    """
    system: Any = None
    for key in ("system", "instructions"):
        if kwargs.get(key) is not None:
            system = _system(kwargs[key])
    config = kwargs.get("config")
    if config is not None and _get(config, "system_instruction") is not None:
        system = _system(_get(config, "system_instruction"))
    for key in ("messages", "input", "contents", "prompt"):
        if kwargs.get(key) is not None:
            messages = _messages(kwargs[key])
            return None if messages is None else (system, messages)
    candidates = [a for a in args if isinstance(a, (str, list, tuple))]
    if len(candidates) != 1:
        return None
    messages = _messages(candidates[0])
    return None if messages is None else (system, messages)


# ----------------------------------------------------------------------------- responses
def _choices(result: Any) -> _Messages | None:
    """OpenAI chat completion choices."""
    out = []
    for choice in _seq(_get(result, "choices")) or []:
        message = _get(choice, "message")
        converted = None if message is None else _message(message)
        if converted is None:
            return None
        converted["role"] = "assistant"
        converted["finish_reason"] = _finish(_get(choice, "finish_reason"))
        out.append(converted)
    return out


def _output_items(result: Any) -> _Messages | None:
    """OpenAI Responses ``output`` items, as one assistant message."""
    parts: _Parts = []
    for item in _seq(_get(result, "output")) or []:
        if _get(item, "type") == "message":
            parts.extend(_parts(_get(item, "content")) or [])
        else:
            part = _part(item)
            if part is not None:
                parts.append(part)
    reason = _responses_finish(result, parts)
    return [{"role": "assistant", "parts": parts, "finish_reason": _finish(reason)}]


def _responses_finish(result: Any, parts: _Parts) -> str:
    details = _get(result, "incomplete_details")
    if details is not None and _get(details, "reason"):
        return str(_get(details, "reason"))
    if any(p.get("type") == "tool_call" for p in parts):
        return "tool_call"
    return str(_get(result, "status") or "stop")


def _candidates(result: Any) -> _Messages | None:
    """Gemini ``generate_content`` candidates."""
    out = []
    for candidate in _seq(_get(result, "candidates")) or []:
        content = _get(candidate, "content")
        parts = _parts(_get(content, "parts")) if content is not None else []
        if parts is None:
            return None
        out.append(
            {
                "role": "assistant",
                "parts": parts,
                "finish_reason": _finish(_get(candidate, "finish_reason")),
            }
        )
    return out


def response_messages(result: Any) -> _Messages | None:
    """The output messages of a response, or ``None`` when its shape is unknown."""
    if result is None or isinstance(result, (int, float, bool)):
        return None
    if isinstance(result, str):
        return [{"role": "assistant", "parts": [_text(result)], "finish_reason": "stop"}]
    if _get(result, "choices") is not None:
        return _choices(result)
    if _get(result, "candidates") is not None:
        return _candidates(result)
    if _get(result, "output") is not None and _get(result, "object") == "response":
        return _output_items(result)
    if _get(result, "stop_reason") is not None or _get(result, "type") == "message":
        parts = _parts(_get(result, "content"))  # Anthropic Message
        if parts is None:
            return None
        reason = _finish(_get(result, "stop_reason"))
        return [{"role": "assistant", "parts": parts, "finish_reason": reason}]
    if _get(result, "type") == "ai":  # LangChain AIMessage
        message = _message(result)
        if message is None:
            return None
        meta = _get(result, "response_metadata") or {}
        reason = _get(meta, "finish_reason") or _get(meta, "stop_reason")
        return [{**message, "finish_reason": _finish(reason)}]
    return None


def response_info(result: Any) -> tuple[str | None, str | None, list[str]]:
    """(response id, response model, finish reasons) of a response; no content."""
    if result is None or isinstance(result, (str, int, float, bool)):
        return None, None, []
    meta = _get(result, "response_metadata") if _get(result, "type") == "ai" else None
    response_id = _get(result, "id") or _get(result, "response_id")
    model = _get(result, "model") or _get(result, "model_version")
    if meta is not None:
        model = model or _get(meta, "model_name") or _get(meta, "model")
        response_id = _get(meta, "id") or response_id
    reasons: list[Any] = []
    if _get(result, "choices") is not None:
        reasons = [_get(c, "finish_reason") for c in _seq(_get(result, "choices")) or []]
    elif _get(result, "candidates") is not None:
        reasons = [_get(c, "finish_reason") for c in _seq(_get(result, "candidates")) or []]
    elif _get(result, "stop_reason") is not None:
        reasons = [_get(result, "stop_reason")]
    elif _get(result, "object") == "response":
        details = _get(result, "incomplete_details")
        reason = _get(details, "reason") if details is not None else None
        reasons = [reason or ("stop" if _get(result, "status") == "completed" else None)]
    elif meta is not None:
        reasons = [_get(meta, "finish_reason") or _get(meta, "stop_reason")]
    finish = [_word(r) for r in reasons if r]
    return (
        response_id if isinstance(response_id, str) else None,
        model if isinstance(model, str) else None,
        finish,
    )


#: The module of OpenAI's ``ChatCompletion``, whose fields :func:`response_reader` reads
#: directly (each missing attribute :func:`response_info` asks of a pydantic model raises,
#: at a cost of microseconds).
_CHAT_COMPLETION = "openai.types.chat.chat_completion"


def _word(reason: Any) -> str:
    """A finish reason as a lower-case word (an enum's value, or its name's last part)."""
    if type(reason) is str and "." not in reason:  # the common case, without getattr's miss
        return reason.lower()
    return str(getattr(reason, "value", reason)).lower().rsplit(".", 1)[-1]


#: (response id, response model, finish reasons, provider told by the response's type).
ResponseInfo = tuple["str | None", "str | None", list[str], "str | None"]


def response_reader(cls: type) -> Callable[[Any], ResponseInfo]:
    """A reader of :func:`response_info` and :func:`provider_of` for responses of exact type
    ``cls``, chosen once per type: an OpenAI ``ChatCompletion``'s fields are read directly."""
    package = cls.__module__.partition(".")[0]
    provider = _PACKAGE_PROVIDERS.get(package)
    if cls.__module__ == _CHAT_COMPLETION:

        def chat_completion(result: Any) -> ResponseInfo:
            reasons = [_word(c.finish_reason) for c in result.choices if c.finish_reason]
            return result.id, result.model, reasons, provider

        return chat_completion
    if provider is not None:

        def by_type(result: Any) -> ResponseInfo:
            return (*response_info(result), provider)

        return by_type

    def general(result: Any) -> ResponseInfo:
        return (*response_info(result), provider_of(result))

    return general


#: The top-level package of a response's class, mapped to ``gen_ai.provider.name``.
_PACKAGE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gen_ai"}


def provider_of(result: Any) -> str | None:
    """``gen_ai.provider.name`` told by a response's type (the SDK that made it), if any."""
    package = type(result).__module__.partition(".")[0]
    if package in _PACKAGE_PROVIDERS:
        return _PACKAGE_PROVIDERS[package]
    if isinstance(result, Mapping):
        if result.get("object") in ("chat.completion", "response"):
            return "openai"
        if result.get("type") == "message" and "stop_reason" in result:
            return "anthropic"
    return None
