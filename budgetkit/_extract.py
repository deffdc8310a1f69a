"""Turn an LLM response into a normalised :class:`~budgetkit._usage.Usage`.

Pure duck typing: no provider SDK is imported. Supported shapes, as objects or
plain dicts:

* OpenAI Chat Completions (``ChatCompletion``, ``ChatCompletionChunk``), and the
  OpenAI-compatible gateways built on it (LiteLLM ``ModelResponse``, OpenRouter,
  DeepSeek, Groq ...);
* OpenAI Responses API (``Response`` and its terminal stream events);
* Anthropic Messages (``Message``, ``message_start`` / ``message_delta`` events);
* Google Gemini (``GenerateContentResponse``, snake_case or camelCase);
* LangChain ``AIMessage`` / ``AIMessageChunk`` (``usage_metadata``);
* AWS Bedrock Converse (``usage.inputTokens`` ..., and the stream ``metadata`` event);
* a bare usage block of any of the above.

Counts are normalised to be inclusive: Anthropic and Bedrock report input
tokens without cache reads and writes, so those are added; OpenAI, Gemini and
LangChain counts already include them.

The finer counts some models price apart (1-hour cache writes, audio, image and
video tokens, web searches) go to ``Usage.details`` under genai-prices' usage
keys, read as genai-prices' own extractors read each provider's body, so a call
is priced exactly as genai-prices prices that body.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from numbers import Integral, Real
from typing import Any, Final

from ._usage import Counts, Usage

__all__ = [
    "ANTHROPIC_USAGE_FIELDS",
    "GEMINI_USAGE_FIELDS",
    "TERMINAL_RESPONSE_EVENTS",
    "MalformedUsageError",
    "direct_reader",
    "extract_usage",
    "read_fields",
]

TERMINAL_RESPONSE_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)
"""OpenAI Responses stream events that carry the final response and its usage."""

ANTHROPIC_USAGE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "server_tool_use",
    "output_tokens_details",
)
"""Fields of an Anthropic usage block; each overwrites on ``message_delta``."""

_GEMINI_COUNT_FIELDS: Final = {
    "prompt_token_count": "promptTokenCount",
    "candidates_token_count": "candidatesTokenCount",
    "thoughts_token_count": "thoughtsTokenCount",
    "cached_content_token_count": "cachedContentTokenCount",
    "tool_use_prompt_token_count": "toolUsePromptTokenCount",
}

# Gemini's per-modality breakdowns, as genai-prices' extractor reads them: the first entry
# of each modality, DOCUMENT counted as IMAGE, tool-use prompt tokens both as input of their
# modality and as tool input.
_GEMINI_MODALITY_FIELDS: Final[dict[str, tuple[str, dict[str, tuple[str, ...]]]]] = {
    "prompt_tokens_details": (
        "promptTokensDetails",
        {
            "TEXT": ("input_text_tokens",),
            "AUDIO": ("input_audio_tokens",),
            "IMAGE": ("input_image_tokens",),
            "DOCUMENT": ("input_image_tokens",),
            "VIDEO": ("input_video_tokens",),
        },
    ),
    "cache_tokens_details": (
        "cacheTokensDetails",
        {
            "TEXT": ("cache_text_read_tokens",),
            "AUDIO": ("cache_audio_read_tokens",),
            "IMAGE": ("cache_image_read_tokens",),
            "DOCUMENT": ("cache_image_read_tokens",),
            "VIDEO": ("cache_video_read_tokens",),
        },
    ),
    "candidates_tokens_details": (
        "candidatesTokensDetails",
        {
            "TEXT": ("output_text_tokens",),
            "AUDIO": ("output_audio_tokens",),
            "IMAGE": ("output_image_tokens",),
            "DOCUMENT": ("output_image_tokens",),
            "VIDEO": ("output_video_tokens",),
        },
    ),
    "tool_use_prompt_tokens_details": (
        "toolUsePromptTokensDetails",
        {
            "TEXT": ("input_text_tokens", "input_text_tool_tokens"),
            "AUDIO": ("input_audio_tokens", "input_audio_tool_tokens"),
            "IMAGE": ("input_image_tokens", "input_image_tool_tokens"),
            "DOCUMENT": ("input_image_tokens", "input_image_tool_tokens"),
            "VIDEO": ("input_video_tokens", "input_video_tool_tokens"),
        },
    ),
}

GEMINI_USAGE_FIELDS: Final = {
    **_GEMINI_COUNT_FIELDS,
    **{snake: camel for snake, (camel, _) in _GEMINI_MODALITY_FIELDS.items()},
}
"""Gemini usage fields, snake_case name to the camelCase JSON name."""

# Bedrock's cacheDetails: the first entry of each TTL, as genai-prices reads it.
_BEDROCK_CACHE_TTLS: Final = {"5m": "cache_write_5m_tokens", "1h": "cache_write_1h_tokens"}

_MISSING: Final = object()
_CLASS_ATTRIBUTES: dict[tuple[type, str], bool] = {}
_CLASS_ATTRIBUTES_LIMIT: Final = 4096
_NOT_DATA_TYPES: Final = (str, bytes, bytearray, Mapping, list, tuple, set, frozenset)


class MalformedUsageError(ValueError):
    """A response carries a usage block whose counts are not non-negative integers.

    Attributes:
        field: the usage field that is malformed, e.g. ``usage.prompt_tokens``.
        value: the value found there.
    """

    def __init__(self, field: str, value: object) -> None:
        self.field = field
        self.value = value
        super().__init__(
            f"malformed usage: {field} is {value!r} ({type(value).__name__}), "
            "expected a non-negative integer"
        )


class _NotUsageError(Exception):
    """Internal: the object is not a usage report at all (e.g. a ``Mock``)."""


def extract_usage(
    response: object, *, model: str | None = None, provider: str | None = None
) -> Usage | None:
    """Read the token usage of one LLM response.

    Args:
        response: the value an LLM call returned: an SDK object, a dict, a
            stream event, or a bare usage block.
        model: the model to record when the response does not name one.
        provider: a provider id hint for pricing (``openai``, ``aws`` ...);
            it wins over the provider inferred from the response's shape.

    Returns:
        The normalised usage, or ``None`` when the response carries no usage.

    Raises:
        MalformedUsageError: a usage block was found but a count is negative,
            not an integer, a bool, or of the wrong type.
    """
    try:
        found = _extract(response, model)
    except MalformedUsageError:
        raise
    except Exception:  # arbitrary objects must never break the caller
        return None
    if found is None:
        return None
    if provider is not None and found.provider != provider:
        return dataclasses.replace(found, provider=provider)
    return found


#: What a direct reader returns: the model the response names (or ``None``), and the counts.
DirectRead = tuple[str | None, Counts]

_CHAT_COMPLETION: Final = ("openai.types.chat.chat_completion", "ChatCompletion")


def direct_reader(cls: type) -> Callable[[Any], DirectRead | None] | None:
    """A fast reader for responses of exactly type ``cls``; ``None``: use :func:`extract_usage`.

    The reader gives what :func:`extract_usage` would, without building a ``Usage``, or
    ``None`` for a response that needs the general reader (extra fields, odd values).
    """
    if (cls.__module__, cls.__qualname__) == _CHAT_COMPLETION:
        return _read_chat_completion
    return None


def _read_chat_completion(response: Any) -> DirectRead | None:
    """An OpenAI ``ChatCompletion`` read as :func:`_openai_chat` does, by attribute.

    Only a response without extra fields qualifies: extra fields are where gateways put a
    reported cost or DeepSeek its cache hits, which the general reader handles. Any count
    that is not a non-negative ``int`` also goes to the general reader, which decides.
    """
    try:
        usage = response.usage
        if usage is None or response.__pydantic_extra__ or usage.__pydantic_extra__:
            return None
        inp = usage.prompt_tokens
        out = usage.completion_tokens
        details = usage.prompt_tokens_details
        if details is None:
            cache_read = cache_write = 0
        elif details.__pydantic_extra__ or details.audio_tokens:  # audio: priced apart
            return None
        else:  # cached_tokens None: the general reader looks for DeepSeek's field
            cache_read = details.cached_tokens
            cache_write = details.cache_write_tokens or 0
        details = usage.completion_tokens_details
        if details is None:
            reasoning = 0
        elif details.audio_tokens:
            return None
        else:
            reasoning = details.reasoning_tokens or 0
        model = response.model
    except AttributeError:  # a field this SDK version does not declare
        return None
    if (
        type(inp) is int is type(out) is type(cache_read) is type(cache_write) is type(reasoning)
        and inp | out | cache_read | cache_write | reasoning >= 0  # all ints: none negative
    ):
        counts = (inp, out, cache_read, cache_write, reasoning)
        return (model if type(model) is str and model else None), counts
    return None


def _extract(response: object, model: str | None) -> Usage | None:
    # Hot path first: an OpenAI ChatCompletion object costs a few dict lookups.
    usage = _get(response, "usage")
    if usage is not None:
        prompt = _get(usage, "prompt_tokens")
        if prompt is not None:
            return _openai_chat(response, usage, prompt, model)
        return _from_block(usage, response, model)
    if isinstance(response, Mapping):
        return _from_mapping(response, model)
    return _from_object(response, model)


def _from_object(response: object, model: str | None) -> Usage | None:
    metadata = _get(response, "usage_metadata")
    if metadata is not None:
        return _from_metadata(metadata, response, model)
    kind = _get(response, "type")
    if kind in TERMINAL_RESPONSE_EVENTS:
        return _extract(_get(response, "response"), model)
    if kind == "message_start":
        return _extract(_get(response, "message"), model)
    # A bare usage object, e.g. ``CompletionUsage`` or ``anthropic.types.Usage``.
    return _from_block(response, None, model)


def _from_mapping(response: Mapping[str, object], model: str | None) -> Usage | None:
    usage = response.get("usage")
    if usage is not None:
        return _from_block(usage, response, model)
    metadata = response.get("usage_metadata", response.get("usageMetadata"))
    if metadata is not None:
        return _from_metadata(metadata, response, model)
    kind = response.get("type")
    if kind in TERMINAL_RESPONSE_EVENTS:
        return _extract(response.get("response"), model)
    if kind == "message_start":
        return _extract(response.get("message"), model)
    bedrock_event = response.get("metadata")
    if isinstance(bedrock_event, Mapping) and bedrock_event.get("usage") is not None:
        return _from_block(bedrock_event["usage"], None, model)
    return _from_block(response, None, model)


def _from_metadata(metadata: object, container: object, model: str | None) -> Usage | None:
    """``usage_metadata``: a LangChain dict, or a Gemini object or dict."""
    if isinstance(metadata, Mapping) and "input_tokens" in metadata:
        return _inclusive_input(metadata, _langchain_model(container) or model, None)
    return _gemini(metadata, _gemini_model(container) or model)


def _from_block(block: object, container: object, model: str | None) -> Usage | None:
    """Dispatch a usage block on its field names."""
    prompt = _get(block, "prompt_tokens")
    if prompt is not None:
        return _openai_chat(container, block, prompt, model)
    response_model = _model_of(container) or model
    if _get(block, "input_tokens") is not None or _get(block, "output_tokens") is not None:
        return _inclusive_input(block, response_model, _reported_cost(container, block))
    if _get(block, "inputTokens") is not None or _get(block, "outputTokens") is not None:
        return _bedrock(block, response_model)
    if _get(block, "prompt_token_count") is not None or _get(block, "promptTokenCount") is not None:
        return _gemini(block, _gemini_model(container) or model)
    return None


def _openai_chat(container: object, usage: object, prompt: object, model: str | None) -> Usage:
    """OpenAI Chat Completions usage; ``prompt_tokens`` already includes cached tokens.

    Also the gateways built on it. LiteLLM's usage carries Anthropic-style cache
    attributes next to an inclusive ``prompt_tokens``: they are never added again, and
    its cache writes (``cache_write_tokens``, ``cache_creation_tokens`` in older
    releases), their TTL split and web searches are read where LiteLLM puts them.
    """
    details: dict[str, int] = {}
    prompt_details = _get(usage, "prompt_tokens_details")
    completion_details = _get(usage, "completion_tokens_details")
    cache_read = cache_write = None
    if prompt_details is not None:
        cache_read = _get(prompt_details, "cached_tokens")
        cache_write = _get(prompt_details, "cache_write_tokens")
        if cache_write is None:  # older LiteLLM
            cache_write = _get_rare(prompt_details, "cache_creation_tokens")
        _put(
            details,
            "input_audio_tokens",
            prompt_details,
            "audio_tokens",
            "usage.prompt_tokens_details",
        )
        split = _get_rare(prompt_details, "cache_creation_token_details")
        if split is not None:  # LiteLLM on an Anthropic route
            _cache_ttl_split(
                details, split, "usage.prompt_tokens_details.cache_creation_token_details"
            )
    if cache_read is None:  # DeepSeek's; LiteLLM and Databricks name them Anthropic's way
        cache_read = _get_rare(usage, "prompt_cache_hit_tokens")
        if cache_read is None:
            cache_read = _get_rare(usage, "cache_read_input_tokens")
    if cache_write is None:
        cache_write = _get_rare(usage, "cache_creation_input_tokens")
    if completion_details is not None:
        _put(
            details,
            "output_audio_tokens",
            completion_details,
            "audio_tokens",
            "usage.completion_tokens_details",
        )
    tools = _get_rare(usage, "server_tool_use")  # LiteLLM
    if tools is not None:
        _put(details, "web_searches", tools, "web_search_requests", "usage.server_tool_use")
    elif prompt_details is not None:
        _put(
            details,
            "web_searches",
            _get_rare(prompt_details, "web_search_requests"),
            None,
            "usage.prompt_tokens_details.web_search_requests",
        )
    return Usage(
        input_tokens=_count(prompt, "usage.prompt_tokens"),
        output_tokens=_count(_get(usage, "completion_tokens"), "usage.completion_tokens"),
        cache_read_tokens=_count(cache_read, "usage.prompt_tokens_details.cached_tokens"),
        cache_write_tokens=_count(cache_write, "usage.prompt_tokens_details.cache_write_tokens"),
        reasoning_tokens=_count(
            _get(completion_details, "reasoning_tokens")
            if completion_details is not None
            else None,
            "usage.completion_tokens_details.reasoning_tokens",
        ),
        model=_model_of(container) or model,
        reported_cost_usd=_reported_cost(container, usage),
        details=details,
    )


def _inclusive_input(block: object, model: str | None, cost: Decimal | None) -> Usage:
    """``input_tokens`` / ``output_tokens`` usage: Responses API, Anthropic, LangChain.

    Responses and LangChain counts are inclusive. Anthropic's ``input_tokens``
    excludes ``cache_creation_input_tokens`` and ``cache_read_input_tokens``; only
    Anthropic reports those two fields, so adding them is always right.
    """
    details: dict[str, int] = {}
    input_tokens = _count(_get(block, "input_tokens"), "usage.input_tokens")
    anthropic_write = _count(
        _get(block, "cache_creation_input_tokens"), "usage.cache_creation_input_tokens"
    )
    anthropic_read = _count(_get(block, "cache_read_input_tokens"), "usage.cache_read_input_tokens")
    cache_read, cache_write, reasoning = anthropic_read, anthropic_write, 0
    if (split := _get(block, "cache_creation")) is not None:  # Anthropic's TTL split
        _cache_ttl_split(details, split, "usage.cache_creation")
    if (tools := _get(block, "server_tool_use")) is not None:  # Anthropic
        _put(details, "web_searches", tools, "web_search_requests", "usage.server_tool_use")
    if (found := _get(block, "input_tokens_details")) is not None:  # Responses API
        cache_read = _count(
            _get(found, "cached_tokens"), "usage.input_tokens_details.cached_tokens"
        )
        cache_write = _count(
            _get(found, "cache_write_tokens"), "usage.input_tokens_details.cache_write_tokens"
        )
    elif (found := _get(block, "input_token_details")) is not None:  # LangChain
        cache_read, cache_write = _langchain_input_details(found, details)
    if (found := _get(block, "output_tokens_details")) is not None:  # Responses, Anthropic
        reasoning_value = _get(found, "reasoning_tokens")
        if reasoning_value is None:
            reasoning_value = _get(found, "thinking_tokens")
        reasoning = _count(reasoning_value, "usage.output_tokens_details.reasoning_tokens")
    elif (found := _get(block, "output_token_details")) is not None:  # LangChain
        reasoning = _count(
            _get(found, "reasoning"), "usage_metadata.output_token_details.reasoning"
        )
        _put(details, "output_audio_tokens", found, "audio", "usage_metadata.output_token_details")
    return Usage(
        input_tokens=input_tokens + anthropic_read + anthropic_write,
        output_tokens=_count(_get(block, "output_tokens"), "usage.output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        model=model,
        reported_cost_usd=cost,
        details=details,
    )


def _langchain_input_details(found: object, details: dict[str, int]) -> tuple[int, int]:
    """LangChain ``input_token_details``: ``(cache read, cache write)``, the rest to ``details``.

    langchain-anthropic reports the cache writes' TTL split as ``ephemeral_5m_input_tokens``
    and ``ephemeral_1h_input_tokens``; its current releases then set ``cache_creation`` to 0,
    older ones kept the total there too. The writes are the larger of the two readings.
    """
    where = "usage_metadata.input_token_details"
    cache_read = _count(_get(found, "cache_read"), f"{where}.cache_read")
    creation = _count(_get(found, "cache_creation"), f"{where}.cache_creation")
    five = _count(_get(found, "ephemeral_5m_input_tokens"), f"{where}.ephemeral_5m_input_tokens")
    hour = _count(_get(found, "ephemeral_1h_input_tokens"), f"{where}.ephemeral_1h_input_tokens")
    _put(details, "cache_write_5m_tokens", five)
    _put(details, "cache_write_1h_tokens", hour)
    _put(details, "input_audio_tokens", found, "audio", where)
    return cache_read, max(creation, five + hour)


def _cache_ttl_split(details: dict[str, int], split: object, where: str) -> None:
    """Anthropic's ``cache_creation``: the cache writes by time to live."""
    _put(details, "cache_write_5m_tokens", split, "ephemeral_5m_input_tokens", where)
    _put(details, "cache_write_1h_tokens", split, "ephemeral_1h_input_tokens", where)


def _put(
    details: dict[str, int],
    key: str,
    source: object,
    name: str | None = None,
    where: str = "",
) -> None:
    """Add a count to ``details`` (counts of zero are left out).

    ``source`` is the count itself (``name`` ``None``), or the object holding it as ``name``;
    ``where`` names its container in a :class:`MalformedUsageError`.
    """
    if name is None:
        count = source if type(source) is int else _count(source, where)
    else:
        count = _count(_get(source, name), f"{where}.{name}")
    if count:
        details[key] = details.get(key, 0) + count


def _bedrock(block: object, model: str | None) -> Usage:
    """Bedrock Converse: ``inputTokens`` excludes the cache counts, so add them."""
    cache_read = _count(_get(block, "cacheReadInputTokens"), "usage.cacheReadInputTokens")
    cache_write = _count(_get(block, "cacheWriteInputTokens"), "usage.cacheWriteInputTokens")
    details: dict[str, int] = {}
    entries = _get(block, "cacheDetails")
    if isinstance(entries, (list, tuple)):
        seen: set[str] = set()
        for entry in entries:
            ttl = _get(entry, "ttl")
            key = _BEDROCK_CACHE_TTLS.get(ttl.lower()) if isinstance(ttl, str) else None
            if key is not None and key not in seen:  # the first entry of each TTL
                seen.add(key)
                _put(details, key, entry, "inputTokens", "usage.cacheDetails[]")
    return Usage(
        input_tokens=_count(_get(block, "inputTokens"), "usage.inputTokens")
        + cache_read
        + cache_write,
        output_tokens=_count(_get(block, "outputTokens"), "usage.outputTokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        model=model,
        provider="aws",
        details=details,
    )


def _gemini(metadata: object, model: str | None) -> Usage | None:
    """Gemini: input = prompt + tool-use prompt; output = candidates + thoughts."""
    counts = {
        snake: _count(_gemini_value(metadata, snake, camel), f"usage_metadata.{snake}")
        for snake, camel in _GEMINI_COUNT_FIELDS.items()
    }
    if (
        not any(counts.values())
        and _gemini_value(metadata, "prompt_token_count", "promptTokenCount") is None
    ):
        return None
    details: dict[str, int] = {}
    _put(details, "input_tool_tokens", counts["tool_use_prompt_token_count"])
    for snake, (camel, keys_of) in _GEMINI_MODALITY_FIELDS.items():
        entries = _gemini_value(metadata, snake, camel)
        if isinstance(entries, (list, tuple)):
            _gemini_modalities(details, entries, keys_of, f"usage_metadata.{snake}[]")
    thoughts = counts["thoughts_token_count"]
    return Usage(
        input_tokens=counts["prompt_token_count"] + counts["tool_use_prompt_token_count"],
        output_tokens=counts["candidates_token_count"] + thoughts,
        cache_read_tokens=counts["cached_content_token_count"],
        reasoning_tokens=thoughts,
        model=_strip_models_prefix(model),
        details=details,
    )


def _gemini_modalities(
    details: dict[str, int],
    entries: list[object] | tuple[object, ...],
    keys_of: Mapping[str, tuple[str, ...]],
    where: str,
) -> None:
    """One breakdown (``[{modality, token_count}, ...]``): the first entry of each modality."""
    seen: set[str] = set()
    for entry in entries:
        modality = _get(entry, "modality")
        if not isinstance(modality, str):  # a MediaModality is a str enum
            continue
        modality = modality.upper()
        keys = keys_of.get(modality)
        if keys is None or modality in seen:
            continue
        seen.add(modality)
        count = _count(_gemini_value(entry, "token_count", "tokenCount"), f"{where}.token_count")
        for key in keys:
            _put(details, key, count)


def _gemini_value(metadata: object, snake: str, camel: str) -> object:
    value = _get(metadata, snake)
    if value is None and isinstance(metadata, Mapping):
        value = metadata.get(camel)
    return value


def read_fields(block: object, names: tuple[str, ...] | Mapping[str, str]) -> dict[str, object]:
    """Return the non-``None`` fields of a usage block, keyed by their snake_case name.

    Args:
        block: a usage object or dict.
        names: the field names to read; a mapping gives each name's camelCase
            alternative for dicts.

    Returns:
        ``{name: value}`` for every field that is present and not ``None``.
    """
    fields: dict[str, object] = {}
    for name in names:
        value = _get(block, name)
        if value is None and isinstance(names, Mapping) and isinstance(block, Mapping):
            value = block.get(names[name])
        if value is not None:
            fields[name] = value
    return fields


def _get(obj: object, name: str) -> object:
    """``obj[name]`` or ``obj.name``; ``None`` when absent.

    A missing attribute on a pydantic model (all SDK responses) costs microseconds
    through ``__getattr__``, so models are read from their field, extra and
    private dicts instead.
    """
    if type(obj) is dict:
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if type(fields) is dict:  # pydantic fields and plain instance attributes
        value = fields.get(name, _MISSING)
        if value is not _MISSING:
            return value
    return _get_elsewhere(obj, name)


def _get_elsewhere(obj: object, name: str) -> object:
    if isinstance(obj, Mapping):
        return obj.get(name)
    extra = getattr(obj, "__pydantic_extra__", _MISSING)
    if extra is _MISSING:  # not a pydantic model: properties, slots, class attributes
        return getattr(obj, name, None)
    if isinstance(extra, dict) and name in extra:
        return extra[name]
    private = getattr(obj, "__pydantic_private__", None)
    if isinstance(private, dict) and name in private:
        return private[name]
    if _class_defines(type(obj), name):  # a property or class attribute
        return getattr(obj, name, None)
    return None


def _get_rare(obj: object, name: str) -> object:
    """Like :func:`_get`, for a field SDK models usually lack; skips class attributes."""
    extra = getattr(obj, "__pydantic_extra__", _MISSING)
    if extra is _MISSING:
        return _get(obj, name)
    value = vars(obj).get(name)
    if value is None and isinstance(extra, dict):
        value = extra.get(name)
    if value is None:
        private = getattr(obj, "__pydantic_private__", None)
        if isinstance(private, dict):
            value = private.get(name)
    return value


def _class_defines(cls: type, name: str) -> bool:
    key = (cls, name)
    found = _CLASS_ATTRIBUTES.get(key)
    if found is None:
        found = any(name in vars(klass) for klass in cls.__mro__)
        if len(_CLASS_ATTRIBUTES) < _CLASS_ATTRIBUTES_LIMIT:
            _CLASS_ATTRIBUTES[key] = found
    return found


def _count(value: object, field: str) -> int:
    """Validate one token count; ``None`` (absent) counts as zero."""
    if type(value) is int:
        if value >= 0:
            return value
        raise MalformedUsageError(field, value)
    if value is None:
        return 0
    return _slow_count(value, field)


def _slow_count(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise MalformedUsageError(field, value)
    if isinstance(value, Integral):
        as_int = int(value)
        if as_int >= 0:
            return as_int
        raise MalformedUsageError(field, value)
    if isinstance(value, Real):
        as_float = float(value)
        if math.isfinite(as_float) and as_float >= 0 and as_float.is_integer():
            return int(as_float)
        raise MalformedUsageError(field, value)
    if isinstance(value, _NOT_DATA_TYPES):
        raise MalformedUsageError(field, value)
    if isinstance(value, Decimal):
        if value.is_finite() and value >= 0 and value == value.to_integral_value():
            return int(value)
        raise MalformedUsageError(field, value)
    # Not data at all (a Mock, an arbitrary object): this is not a usage report.
    raise _NotUsageError


def _model_of(container: object) -> str | None:
    if container is None:
        return None
    value = _get(container, "model")
    return value if isinstance(value, str) and value else None


def _gemini_model(container: object) -> str | None:
    if container is None:
        return None
    value = _get(container, "model_version")
    if value is None and isinstance(container, Mapping):
        value = container.get("modelVersion")
    return value if isinstance(value, str) and value else None


def _langchain_model(container: object) -> str | None:
    metadata = _get(container, "response_metadata")
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get("model_name") or metadata.get("model")
    return value if isinstance(value, str) and value else None


def _strip_models_prefix(model: str | None) -> str | None:
    if model is not None and model.startswith("models/"):
        return model[len("models/") :]
    return model


def _reported_cost(container: object, usage: object) -> Decimal | None:
    """A cost the gateway reported: LiteLLM ``_hidden_params``, OpenRouter ``usage.cost``."""
    hidden = _get_rare(container, "_hidden_params") if container is not None else None
    if isinstance(hidden, Mapping):
        cost = _as_cost(hidden.get("response_cost"))
        if cost is not None:
            return cost
    return _as_cost(_get_rare(usage, "cost"))


def _as_cost(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    # repr() gives the shortest decimal that round-trips: 0.00123, not 0.0012299999...
    cost = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not cost.is_finite() or cost < 0:
        return None
    return cost
