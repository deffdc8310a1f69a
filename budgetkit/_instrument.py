"""Zero-code budgets: charge every request the ``openai`` and ``anthropic`` clients send.

Patching goes through ``wrapt``'s post-import hooks, so it applies whether the SDK is
imported before or after :func:`instrument`.

**Where.** Every method of both SDKs (``create``, ``parse``, ``stream``, the
``with_raw_response`` / ``with_streaming_response`` variants, ``beta``, helpers that loop,
``client.post(...)`` itself) sends its requests through one method of the client's base class,
``SyncAPIClient.request`` / ``AsyncAPIClient.request``, which also runs the retries. budgetkit
patches that method (four patches, not one per SDK method), so one logical request is one
charge, whichever method sent it, and a method a new SDK version adds is covered too. The
websocket ``connect`` methods (Realtime, Live, Responses over websocket) do not go through it
and are patched one by one (:data:`SOCKET_TARGETS`).

**What is charged.** Each request is classified by its endpoint (:func:`classify`):

* a *model* endpoint (:data:`MODEL_ENDPOINTS`: chat completions, Responses, legacy
  completions, embeddings; Anthropic messages and legacy complete) is an LLM call: admitted
  (a step boundary of the current session), its usage read from the response, the stream or
  the raw body, and priced;
* a *free* request (:data:`FREE_RULES`: reads and deletes, token counting, moderation, account
  administration, files and stored state, cancelling) passes through uncounted;
* anything else is a *paid* request budgetkit cannot price (images, audio, fine-tuning,
  batches, realtime sessions, an endpoint added after this release ...): it is counted as an
  LLM call and, when its response carries no token usage, recorded as unmeasured, which a
  USD limit does not let pass (fail closed).

**Reservations.** A request that caps its output (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``) reserves an upper-bound cost first, so spend never passes ``max_usd``.
A Responses request that names ``previous_response_id`` or a ``conversation`` is billed for
the stored conversation as input: the reservation adds the tokens budgetkit saw that response
(or conversation) hold (:class:`StoredContext`), or, for an id it never saw, the model's whole
context window (genai-prices' figure, else :data:`UNKNOWN_CONTEXT_TOKENS`).

**Streams.** An OpenAI chat or completions stream started without
``stream_options={"include_usage": True}`` gets it added (merged into the caller's
``stream_options``; an explicit ``include_usage: False`` is kept), and the usage-only last
chunk it brings is not shown to the caller, who did not ask for it. Raw-response requests are
sent as written (their caller reads the wire).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import wrapt

from . import _otel
from ._boundary import Boundary, active
from ._calls import LLMCall, Loaded, Nesting, llm_finished, settle_abandoned
from ._otel import start_call
from ._values import LLM, CallSpec
from ._wrap import llm_wrapper

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._session import SessionBudget
    from ._usage import Usage

__all__ = [
    "FREE_RULES",
    "MODEL_ENDPOINTS",
    "SOCKET_TARGETS",
    "UNKNOWN_CONTEXT_TOKENS",
    "Decision",
    "FreeRule",
    "StoredContext",
    "classify",
    "instrument",
    "is_instrumented",
    "uninstrument",
]

#: The request methods every SDK method goes through: (module, class, method, provider).
REQUEST_TARGETS: Final = (
    ("openai._base_client", "SyncAPIClient", "request", "openai"),
    ("openai._base_client", "AsyncAPIClient", "request", "openai"),
    ("anthropic._base_client", "SyncAPIClient", "request", "anthropic"),
    ("anthropic._base_client", "AsyncAPIClient", "request", "anthropic"),
)

#: Websocket sessions, which bypass the request method: each ``connect`` is one paid call
#: that reports no usage (so a USD limit stops the session at its next boundary).
SOCKET_TARGETS: Final = tuple(
    (f"openai.resources.{module}", f"{prefix}{cls}", "connect", "openai")
    for module, cls in (
        ("realtime.realtime", "Realtime"),
        ("realtime.translations.translations", "Translations"),
        ("beta.realtime.realtime", "Realtime"),
        ("responses.responses", "Responses"),
        ("beta.responses.responses", "Responses"),
        ("live.live", "Live"),
        ("live.forks", "Forks"),
        ("live.sideband", "Sideband"),
    )
    for prefix in ("", "Async")
)

#: POST endpoints answered with token usage: charged and priced. Path (after ``/v1`` for
#: Anthropic, without the query) to endpoint kind.
MODEL_ENDPOINTS: Final[Mapping[str, Mapping[str, str]]] = {
    "openai": {
        "/chat/completions": "chat",
        "/completions": "completions",
        "/responses": "responses",
        "/responses/compact": "responses",
        "/embeddings": "embeddings",
    },
    "anthropic": {"/messages": "messages", "/complete": "complete"},
}


class FreeRule(NamedTuple):
    """A kind of request that runs no model and is not charged."""

    name: str
    why: str


_READ, _COUNT, _MODERATION, _ADMIN, _STORED, _STOP = (
    FreeRule(
        "read or delete",
        "GET, HEAD and DELETE requests list, retrieve, download, poll or delete stored "
        "objects; no model runs.",
    ),
    FreeRule(
        "token counting",
        "count_tokens (Anthropic) and responses/input_tokens (OpenAI) count a prompt's "
        "tokens free of charge.",
    ),
    FreeRule("moderation", "OpenAI's moderation endpoint is free of charge."),
    FreeRule(
        "account administration",
        "organization, project, workspace, user, key, role and spend settings (the admin APIs).",
    ),
    FreeRule(
        "files and stored state",
        "uploading files and creating or updating stored objects (conversations and their "
        "items, assistants, threads and their messages, vector stores, skills, webhooks, "
        "agent and environment definitions, memory stores, vaults): storage is billed by "
        "size and time, not per request, and no model runs. A path with a runs, sessions or "
        "invocations segment starts work and is not free.",
    ),
    FreeRule("stopping work", "cancel, archive and pause end or hide work; they start none."),
)

#: The reviewed kinds of free request (see :func:`classify`).
FREE_RULES: Final = (_READ, _COUNT, _MODERATION, _ADMIN, _STORED, _STOP)

_COUNT_SEGMENTS: Final = frozenset({"count_tokens", "input_tokens"})
_ADMIN_SEGMENTS: Final = frozenset({"organization", "organizations", "projects", "compliance"})
_STORED_SEGMENTS: Final = frozenset(
    {
        "files",
        "uploads",
        "conversations",
        "assistants",
        "threads",
        "vector_stores",
        "skills",
        "webhook_endpoints",
        "chat",  # /chat/completions/{id}: a stored completion's metadata
        "evals",  # definitions; their runs are paid
        "agents",
        "environments",
        "memory_stores",
        "vaults",
        "user_profiles",
        "tunnels",
    }
)
_STARTS_WORK: Final = frozenset({"runs", "sessions", "invocations"})
_STOP_SEGMENTS: Final = frozenset({"cancel", "archive", "pause"})


class Decision(NamedTuple):
    """How a request is charged: ``kind`` is ``"model"``, ``"paid"`` or ``"free"``."""

    kind: str
    segments: tuple[str, ...]
    """The path's segments (after ``/v1``, without the query)."""
    endpoint: str | None = None
    """For a model endpoint, its kind (``chat``, ``responses``, ``messages`` ...)."""
    rule: FreeRule | None = None
    """For a free request, the rule that frees it."""


def classify(provider: str, method: str, url: str) -> Decision:
    """Classify one request of ``provider``'s client by its HTTP method and URL path.

    Model endpoints first, then the free rules in order; anything else is paid (fail
    closed: an endpoint added after this release is charged until someone reviews it).
    """
    path = url.split("?", 1)[0].rstrip("/") or "/"
    if provider == "anthropic" and path.startswith("/v1/"):
        path = path[3:]
    segments = tuple(part for part in path.split("/") if part)
    verb = method.upper()
    if verb in {"GET", "HEAD", "DELETE", "OPTIONS"}:
        return Decision("free", segments, rule=_READ)
    endpoint = MODEL_ENDPOINTS.get(provider, {}).get(path)
    if endpoint is not None:
        return Decision("model", segments, endpoint=endpoint)
    words = frozenset(segments)
    if words & _COUNT_SEGMENTS:
        return Decision("free", segments, rule=_COUNT)
    if words & _STOP_SEGMENTS:
        return Decision("free", segments, rule=_STOP)
    first = segments[0] if segments else ""
    if first == "moderations":
        return Decision("free", segments, rule=_MODERATION)
    if first in _ADMIN_SEGMENTS:
        return Decision("free", segments, rule=_ADMIN)
    if (first in _STORED_SEGMENTS or segments[-1:] == ("files",)) and not words & _STARTS_WORK:
        return Decision("free", segments, rule=_STORED)
    return Decision("paid", segments)


# ------------------------------------------------------------------ stored context
UNKNOWN_CONTEXT_TOKENS: Final = 1_000_000
"""Input tokens reserved for a stored response or conversation budgetkit never saw, when
genai-prices does not know the model's context window: the largest windows offered today."""


class StoredContext:
    """Token totals (input plus output) of the Responses responses and conversations seen,
    by id; the least recently used are forgotten past ``capacity``. Thread-safe."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._tokens: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tokens)

    def remember(self, key: str, tokens: int) -> None:
        """Record what the response or conversation ``key`` holds now."""
        with self._lock:
            self._tokens[key] = tokens
            self._tokens.move_to_end(key)
            while len(self._tokens) > self._capacity:
                self._tokens.popitem(last=False)

    def tokens(self, key: str) -> int | None:
        """The tokens ``key`` holds, or ``None`` when it was never seen (or forgotten)."""
        with self._lock:
            tokens = self._tokens.get(key)
            if tokens is not None:
                self._tokens.move_to_end(key)
            return tokens


#: What this process saw of the responses and conversations the provider stores.
STORED: Final = StoredContext()

# ------------------------------------------------------------------ patching
_lock = threading.RLock()


class _State:
    def __init__(self) -> None:
        self.active = False
        self.fallback: SessionBudget | None = None
        self.hooked: set[str] = set()
        #: (owner class, method name, original, our wrapper)
        self.patched: list[tuple[Any, str, Any, Any]] = []


_state = _State()


class _Patched(wrapt.FunctionWrapper[..., Any]):
    """Marks budgetkit's own wrappers (another library's ``FunctionWrapper`` is not ours)."""


def instrument(session: SessionBudget | None = None) -> None:
    """Charge every request of the ``openai`` and ``anthropic`` clients to the current session.

    Model calls are charged and priced; a few reviewed kinds of request (reads, token
    counting, files and stored state ...) are free; any other request is counted as an LLM
    call that budgetkit cannot price. See the module's documentation for the rules.

    Calls made outside any ``with SessionBudget(...)`` block pass through uncharged,
    unless ``session`` is given. Calling it again only replaces ``session``.

    Args:
        session: the session to charge when none is active in the calling context
            (threads that did not copy the context, for example), while it is running;
            ``budgetkit run`` passes its own.

    .. versionadded:: 0.1.0
    """
    with _lock:
        _state.fallback = session
        if _state.active:
            return
        _state.active = Nesting.guard = True
        for module, cls, method, provider in (*REQUEST_TARGETS, *SOCKET_TARGETS):
            if module in sys.modules:  # imported already (or instrumented before)
                _patch(sys.modules[module], cls, method, provider)
            key = f"{module}:{cls}.{method}"
            if key not in _state.hooked:  # wrapt keeps hooks forever: register once
                _state.hooked.add(key)
                wrapt.register_post_import_hook(_hook(cls, method, provider), module)


def uninstrument() -> None:
    """Undo :func:`instrument`: restore the original methods.

    .. versionadded:: 0.1.0
    """
    with _lock:
        _state.active = Nesting.guard = False
        _state.fallback = None
        for owner, method, original, ours in reversed(_state.patched):
            if owner.__dict__.get(method) is ours:  # not re-wrapped by someone else since
                setattr(owner, method, original)
        _state.patched.clear()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _state.active


def _hook(cls_name: str, method: str, provider: str) -> Callable[[Any], None]:
    def hook(module: Any) -> None:
        with _lock:
            if _state.active:
                _patch(module, cls_name, method, provider)

    return hook


def _patch(module: Any, cls_name: str, method: str, provider: str) -> None:
    owner = getattr(module, cls_name, None)
    if owner is None:
        return
    original = owner.__dict__.get(method)
    if original is None or isinstance(original, _Patched):
        return
    if method == "request":
        wrapper = (_async_request if cls_name.startswith("Async") else _sync_request)(provider)
    else:
        spec = CallSpec(LLM, f"{provider}.{cls_name}.{method}", provider=provider)
        wrapper = llm_wrapper(spec, current=_session)
    ours = _Patched(original, wrapper)
    setattr(owner, method, ours)
    _state.patched.append((owner, method, original, ours))


def _session() -> Boundary | None:
    if not _state.active:  # a wrapper someone else re-wrapped, so it stayed in place
        return None
    if Nesting.inside.get():  # called by a @budget.llm_call function: it charges the call
        return None
    found = active.get()
    if found is not None:
        return found
    return _fallback()


def _fallback() -> Boundary | None:
    """The session given to :func:`instrument`, while it is running."""
    fallback = _state.fallback
    if fallback is not None and fallback.boundary.handle is not None and fallback.result is None:
        return fallback.boundary
    return None


# ------------------------------------------------------------------ one request
class _Route(NamedTuple):
    """A charged endpoint: the call spec, and what the request wrapper does for it."""

    spec: CallSpec
    endpoint: str | None  # the model endpoint's kind; None for a paid request
    include_usage: bool  # an OpenAI stream that reports usage only when asked
    watch: frozenset[str]  # body keys that need more than the fast path (stream, caps ...)


_EMPTY: Final[Mapping[str, Any]] = {}
_MISSING: Final[Any] = object()
_ROUTE_CACHE_LIMIT: Final = 4096
_RAW_HEADER: Final = "X-Stainless-Raw-Response"
_OUTPUT_CAPS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_PROMPT_KEYS: Final = ("messages", "input", "prompt", "system", "instructions", "tools")
_STORED_KEYS: Final = ("previous_response_id", "conversation")


class _Router:
    """Classifies a request's options, cached per (method, URL): one dict lookup a call."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.cache: dict[tuple[str, str], _Route | None] = {}
        self._specs: dict[str, CallSpec] = {}

    def route(self, key: tuple[str, str]) -> _Route | None:
        decision = classify(self.provider, *key)
        found: _Route | None = None
        if decision.kind != "free":
            provider = self.provider
            name = decision.endpoint or "/".join(decision.segments[:1]) or "request"
            spec = self._specs.get(name)
            if spec is None:
                spec = self._specs[name] = CallSpec(LLM, f"{provider}.{name}", provider=provider)
            stream_usage = provider == "openai" and decision.endpoint in {"chat", "completions"}
            watch = {*_OUTPUT_CAPS}
            if stream_usage:
                watch.add("stream")
            if decision.endpoint == "responses":
                watch.update(_STORED_KEYS)
            found = _Route(spec, decision.endpoint, stream_usage, frozenset(watch))
        if len(self.cache) < _ROUTE_CACHE_LIMIT:
            self.cache[key] = found
        return found


def _sync_request(provider: str) -> Callable[..., Any]:
    """The wrapper of a sync client's request method. Its fast path (a request with nothing
    to reserve or add) does what ``@budget.llm_call``'s does, plus one lookup of the route."""
    router = _Router(provider)
    cache = router.cache
    state = _state
    inside = Nesting.inside.get
    current = active.get
    loaded = Loaded
    quiet = _otel.quiet

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not state.active or inside():  # re-wrapped by someone else; or a decorated call's
            return wrapped(*args, **kwargs)
        session = current() or _fallback()
        if session is None:
            return wrapped(*args, **kwargs)
        options = args[1] if len(args) > 1 else kwargs["options"]
        key = (options.method, options.url)
        route = cache.get(key, _MISSING)
        if route is _MISSING:
            route = router.route(key)
        if route is None:  # free
            return wrapped(*args, **kwargs)
        if loaded.abandoned:  # streams dropped since the last boundary are charged first
            settle_abandoned()
        body = options.json_data
        if type(body) is not dict or not route.watch.isdisjoint(body):
            return _sync_general(session, route, wrapped, options, args, kwargs)
        spec = route.spec
        session.admit_llm(spec.name)
        handle = None if quiet() else start_call(session, spec, (), body)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            LLMCall(session, spec, None, None, handle).fail(exc)
            raise
        if route.endpoint != "responses":
            return llm_finished(session, spec, handle, body, result)
        call = LLMCall(session, spec, spec.request_model(body), None, handle)
        call.observer = _remembering(body)
        return call.finish(result)

    return wrapper


def _admit_general(
    session: Boundary, route: _Route, options: Any, args: Any, kwargs: Any
) -> tuple[LLMCall, Any, bool, Any, Any]:
    """Admit a request of the general path (reserving its worst case when it caps its
    output); the call, the request body, whether to hide usage chunks, and the arguments."""
    spec = route.spec
    body, hide, args, kwargs = _prepare(route, options, args, kwargs)
    tokens = _reservation(route, body)
    if tokens is None:
        session.admit_llm(spec.name)
        call = LLMCall(session, spec, spec.request_model(body), None, _start(session, spec, body))
    else:
        call = LLMCall.reserving(session, spec, tokens, body)
    return call, body, hide, args, kwargs


def _sync_general(
    session: Boundary,
    route: _Route,
    wrapped: Callable[..., Any],
    options: Any,
    args: Any,
    kwargs: Any,
) -> Any:
    """A request that reserves, or whose stream budgetkit asks for its usage."""
    call, body, hide, args, kwargs = _admit_general(session, route, options, args, kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    if route.endpoint == "responses":
        call.observer = _remembering(body)
    return call.finish(result, hide_usage_chunks=hide)


def _async_request(provider: str) -> Callable[..., Any]:
    """The wrapper of an async client's request method (as :func:`_sync_request`)."""
    router = _Router(provider)
    cache = router.cache
    state = _state
    inside = Nesting.inside.get
    current = active.get
    loaded = Loaded
    quiet = _otel.quiet

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not state.active or inside():
            return await wrapped(*args, **kwargs)
        session = current() or _fallback()
        if session is None:
            return await wrapped(*args, **kwargs)
        options = args[1] if len(args) > 1 else kwargs["options"]
        key = (options.method, options.url)
        route = cache.get(key, _MISSING)
        if route is _MISSING:
            route = router.route(key)
        if route is None:
            return await wrapped(*args, **kwargs)
        if loaded.abandoned:
            settle_abandoned()
        body = options.json_data
        if type(body) is not dict or not route.watch.isdisjoint(body):
            return await _async_general(session, route, wrapped, options, args, kwargs)
        spec = route.spec
        session.admit_llm(spec.name)
        handle = None if quiet() else start_call(session, spec, (), body)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            LLMCall(session, spec, None, None, handle).fail(exc)
            raise
        if route.endpoint != "responses":
            return llm_finished(session, spec, handle, body, result)
        call = LLMCall(session, spec, spec.request_model(body), None, handle)
        call.observer = _remembering(body)
        return call.finish(result)

    return wrapper


async def _async_general(
    session: Boundary,
    route: _Route,
    wrapped: Callable[..., Any],
    options: Any,
    args: Any,
    kwargs: Any,
) -> Any:
    """:func:`_sync_general` for an async client."""
    call, body, hide, args, kwargs = _admit_general(session, route, options, args, kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    if route.endpoint == "responses":
        call.observer = _remembering(body)
    return call.finish(result, hide_usage_chunks=hide)


def _start(session: Boundary, spec: CallSpec, body: Mapping[str, Any]) -> Any:
    return None if _otel.quiet() else start_call(session, spec, (), body)


def _prepare(
    route: _Route, options: Any, args: Any, kwargs: Any
) -> tuple[Mapping[str, Any], bool, Any, Any]:
    """The request body; for an OpenAI stream that did not ask for its usage, the options
    with ``include_usage`` added (and ``True``: hide the usage chunk from the caller)."""
    body = options.json_data
    if not isinstance(body, Mapping):
        return _EMPTY, False, args, kwargs
    if not route.include_usage or body.get("stream") is not True:
        return body, False, args, kwargs
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, Mapping):
        return body, False, args, kwargs
    if stream_options is not None and "include_usage" in stream_options:
        return body, False, args, kwargs  # the caller decided, either way
    headers = options.headers
    if isinstance(headers, Mapping) and headers.get(_RAW_HEADER):
        return body, False, args, kwargs  # a raw-response caller reads the wire as sent
    body = {**body, "stream_options": {**(stream_options or {}), "include_usage": True}}
    options = options.model_copy(update={"json_data": body})
    if len(args) > 1:
        args = (args[0], options, *args[2:])
    else:
        kwargs = {**kwargs, "options": options}
    return body, True, args, kwargs


def _reservation(route: _Route, body: Mapping[str, Any]) -> dict[str, int] | None:
    """Upper-bound tokens of a request that caps its output, plus any stored context it
    names; ``None`` when there is nothing to bound."""
    output: int | None = None
    for key in _OUTPUT_CAPS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            output = value
            break
    stored = 0
    names_stored = False
    if route.endpoint == "responses":
        for key in _STORED_KEYS:
            ref = _stored_id(body.get(key))
            if ref is not None:
                names_stored = True
                stored += _stored_tokens(ref, route.spec.request_model(body))
    if output is None and not names_stored:
        return None
    prompt = {k: body.get(k) for k in _PROMPT_KEYS}
    # About four characters make a token; counting two keeps the bound on the safe side.
    text = json.dumps(prompt, default=str)
    return {"input_tokens": len(text) // 2 + 64 + stored, "output_tokens": output or 0}


def _stored_id(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):  # conversation={"id": "conv_..."}
        found = value.get("id")
        return found if isinstance(found, str) and found else None
    return None


def _stored_tokens(ref: str, model: str | None) -> int:
    """What the provider holds under ``ref``: seen, else the model's context window."""
    seen = STORED.tokens(ref)
    if seen is not None:
        return seen
    from ._pricing import context_window  # a rare path: an id this process never saw

    return context_window(model) or UNKNOWN_CONTEXT_TOKENS


def _remembering(body: Mapping[str, Any]) -> Callable[[str, Usage], None]:
    """The observer of a Responses call: remember what the response (and its conversation)
    holds now, for the next request that names it."""
    conversation = _stored_id(body.get("conversation"))

    def remember(response_id: str, usage: Usage) -> None:
        total = usage.input_tokens + usage.output_tokens
        STORED.remember(response_id, total)
        if conversation is not None:
            STORED.remember(conversation, total)

    return remember
