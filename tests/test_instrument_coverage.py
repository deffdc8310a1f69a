"""``instrument()`` charges every request the openai and anthropic clients can send (#16 item 4).

budgetkit patches the clients' one request method (``SyncAPIClient.request`` /
``AsyncAPIClient.request`` of each SDK) and decides per request, by its endpoint, whether it is
a model call (charged and priced), one of a few reviewed free kinds, or another paid request
(charged, and failing closed under a USD limit when it reports no usage). These tests

* walk the installed clients' resource tree and fail when a public method can send a request
  that budgetkit does not see, or whose endpoint nobody has reviewed;
* call every model method (create / parse / stream, the raw-response variants, beta, legacy
  completions, embeddings; sync and async) through the real clients against the stub server
  and check that each is charged once, with its real tokens;
* run ``budgetkit run --max-llm-calls 2`` on a script that makes five ``messages.stream()``
  calls.
"""

from __future__ import annotations

import ast
import functools
import inspect
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any, NamedTuple

import anthropic
import openai
import pytest
from anthropic._base_client import AsyncAPIClient as AnthropicAsyncClient
from anthropic._base_client import SyncAPIClient as AnthropicSyncClient
from anthropic._resource import AsyncAPIResource as AnthropicAsyncResource
from anthropic._resource import SyncAPIResource as AnthropicSyncResource
from openai._base_client import AsyncAPIClient as OpenAIAsyncClient
from openai._base_client import SyncAPIClient as OpenAISyncClient
from openai._resource import AsyncAPIResource as OpenAIAsyncResource
from openai._resource import SyncAPIResource as OpenAISyncResource
from pydantic import BaseModel

import budgetkit
from budgetkit import SessionBudget
from budgetkit._instrument import (
    FREE_RULES,
    MODEL_ENDPOINTS,
    SOCKET_TARGETS,
    classify,
    is_instrumented,
)
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

USAGE = (1200, 300)
MESSAGES: Any = [{"role": "user", "content": "Summarise the budget rules."}]
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"

# ------------------------------------------------------------------------------ the reviewed lists
#: Public resource methods that send no request themselves, with why that is fine: they work
#: locally, or return a helper object that sends its requests later through the client's
#: methods (so through the patched request method, each request charged by its endpoint).
#: Websocket ``connect`` methods are not here: instrument() patches them.
NO_REQUEST: dict[str, str] = {
    "webhooks.unwrap": "verifies and parses a webhook payload locally",
    "webhooks.verify_signature": "checks a webhook signature locally",
    "beta.webhooks.unwrap": "verifies and parses a webhook payload locally",
    "beta.webhooks.parse_unverified": "parses a webhook payload locally",
    "beta.messages.tool_runner": "a runner that calls messages.create / stream per turn",
    "beta.messages.thread": "a conversation that calls messages.create / stream per turn",
    "beta.sessions.events.tool_runner": "a runner that sends session events per turn",
    "beta.environments.work.poller": "a poller of work items (GET requests)",
    "beta.environments.work.worker": "a worker that polls and acknowledges work items",
    "beta.agents.sessions.stream": "a session stream that sends session events",
    "beta.agents.sessions.artifacts.for_result": "an accessor of a result's artifacts (GETs)",
}

#: First path segments of endpoints charged as *unpriced* paid calls (counted as LLM calls and,
#: without usage in the response, failing closed under a USD limit). Reviewed: each runs a model
#: or bills per request without a token usage budgetkit can price. A new SDK endpoint that is
#: neither a model endpoint nor free by a rule of ``FREE_RULES`` lands here and fails the test,
#: so that someone decides.
PAID_REVIEWED: dict[str, set[str]] = {
    "openai": {
        "agents",  # agent sessions, their events and automation invocations run agents
        "audio",  # speech, transcription, translation, custom voices
        "batches",  # a batch job bills when it completes
        "chatkit",  # a ChatKit session runs a workflow
        "containers",  # a code-interpreter container bills per session
        "content_provenance_checks",
        "decisions",
        "evals",  # eval runs call models
        "fine_tuning",  # training jobs, grader runs
        "images",
        "live",  # live sessions
        "realtime",  # realtime calls and client secrets start billed sessions
        "threads",  # assistants runs
        "videos",
    },
    "anthropic": {
        "deployments",  # running a deployment runs an agent
        "dreams",
        "messages",  # message batches bill when they complete
        "sessions",  # managed-agent sessions and the events that drive them
    },
}

#: The model methods, which must reach a model endpoint (charged and priced).
MODEL_METHODS = {
    "openai": {
        "chat.completions.create",
        "chat.completions.parse",
        "chat.completions.stream",
        "responses.create",
        "responses.parse",
        "responses.stream",
        "responses.compact",
        "beta.responses.create",
        "completions.create",
        "embeddings.create",
    },
    "anthropic": {
        "messages.create",
        "messages.parse",
        "messages.stream",
        "beta.messages.create",
        "beta.messages.parse",
        "beta.messages.stream",
    },
}

# ------------------------------------------------------------------------------ the walk
_VERBS = {"_post": "POST", "_get": "GET", "_put": "PUT", "_patch": "PATCH", "_delete": "DELETE"}
_VERBS["_get_api_list"] = "GET"


class Found(NamedTuple):
    """What a method's source shows: the requests it sends and the methods it calls."""

    endpoints: set[tuple[str, str]]
    calls: set[Any]  # bound methods it delegates to


def _resources(root: Any, base: tuple[type, ...]) -> Iterator[tuple[str, Any]]:
    """Every resource class reachable from ``root`` through its (cached) properties, by the
    first path found (``beta.chat.completions`` is ``chat.completions``' class)."""
    seen: set[type] = set()
    queue: list[tuple[str, Any]] = [("", root)]
    while queue:
        path, obj = queue.pop()
        for name in dir(type(obj)):
            if name.startswith("_") or name in {"with_raw_response", "with_streaming_response"}:
                continue
            static = inspect.getattr_static(type(obj), name)
            if not isinstance(static, property | functools.cached_property):
                continue
            child = getattr(obj, name)
            if isinstance(child, base) and type(child) not in seen:
                seen.add(type(child))
                child_path = f"{path}.{name}" if path else name
                yield child_path, child
                queue.append((child_path, child))


def _methods(resource: Any) -> Iterator[tuple[str, Any]]:
    """The public methods a resource class defines (not its base's ``with_*`` helpers)."""
    for name in dir(type(resource)):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(type(resource), name)
        if inspect.isfunction(static):
            yield name, getattr(resource, name)


def _path_of(node: ast.expr | None) -> str | None:
    """The path literal of ``"/x"``, ``f"/x/{id}"`` or ``path_template("/x/{id}", ...)``."""
    if isinstance(node, ast.Call) and node.args:
        node = node.args[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = (v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        return "".join(str(p) for p in parts)
    return None


def _chain(node: ast.expr) -> list[str] | None:
    """``recv.a.b`` as ``[recv, "a", "b"]``; ``None`` for anything else."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


def _analyse(fn: Any, receiver: Any, client: Any, depth: int = 0) -> Found:
    """Requests ``fn`` sends and methods it delegates to (following helpers given ``self``)."""
    found = Found(set(), set())
    code = inspect.unwrap(getattr(fn, "__func__", fn))  # past @deprecated, @required_args
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(code)))
    except (OSError, TypeError):
        return found
    params = list(inspect.signature(code).parameters)
    recv = params[0] if params else "self"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = node.func
            args = list(node.args)
            is_partial = (isinstance(target, ast.Name) and target.id == "partial") or (
                isinstance(target, ast.Attribute) and target.attr == "partial"
            )
            if is_partial and args:
                target, args = args[0], args[1:]
            chain = _chain(target)
            if chain and chain[0] == recv and len(chain) == 2 and chain[1] in _VERBS:
                path = _path_of(args[0] if args else None)
                found.endpoints.add((_VERBS[chain[1]], path or "?"))
                continue
            helper = code.__globals__.get(target.id) if isinstance(target, ast.Name) else None
            passes_self = any(isinstance(a, ast.Name) and a.id == recv for a in node.args)
            if inspect.isfunction(helper) and passes_self and depth < 2:
                inner = _analyse(helper, receiver, client, depth + 1)
                found.endpoints.update(inner.endpoints)
                found.calls.update(inner.calls)
        if isinstance(node, ast.Attribute):
            chain = _chain(node)
            if not chain or chain[0] != recv or len(chain) < 2 or chain[1] in _VERBS:
                continue
            obj = client if chain[1] == "_client" else receiver
            try:
                for name in chain[2:] if chain[1] == "_client" else chain[1:]:
                    obj = getattr(obj, name)
            except AttributeError:
                continue
            if not inspect.ismethod(obj):  # with_raw_response.X wraps the method X
                obj = getattr(obj, "__wrapped__", obj)
            owner = getattr(obj, "__self__", None)
            if inspect.ismethod(obj) and isinstance(owner, RESOURCE_BASES):
                found.calls.add(obj)
    return found


RESOURCE_BASES = (
    OpenAISyncResource,
    OpenAIAsyncResource,
    AnthropicSyncResource,
    AnthropicAsyncResource,
)


def _clients() -> Iterator[tuple[str, Any]]:
    url = "http://127.0.0.1:9"
    yield "openai", openai.OpenAI(api_key="x", base_url=url)
    yield "openai", openai.AsyncOpenAI(api_key="x", base_url=url)
    yield "anthropic", anthropic.Anthropic(api_key="x", base_url=url)
    yield "anthropic", anthropic.AsyncAnthropic(api_key="x", base_url=url)


class Method(NamedTuple):
    provider: str
    path: str  # e.g. "chat.completions.create"
    bound: Any
    found: Found


def _all_methods() -> list[Method]:
    methods: list[Method] = []
    for provider, client in _clients():
        for path, resource in _resources(client, RESOURCE_BASES):
            for name, bound in _methods(resource):
                found = _analyse(bound, resource, client)
                methods.append(Method(provider, f"{path}.{name}", bound, found))
    return methods


def _reachable(methods: list[Method]) -> dict[int, set[tuple[str, str]]]:
    """Endpoints each method reaches, following delegation (by the bound method's identity)."""
    by_key = {_key(m.bound): m for m in methods}
    memo: dict[int, set[tuple[str, str]]] = {}

    def reach(m: Method, stack: frozenset[int]) -> set[tuple[str, str]]:
        key = _key(m.bound)
        if key in memo:
            return memo[key]
        out = set(m.found.endpoints)
        for callee in m.found.calls:
            other = by_key.get(_key(callee))
            if other is not None and _key(callee) not in stack:
                out |= reach(other, stack | {key})
        memo[key] = out
        return out

    for m in methods:
        reach(m, frozenset())
    return memo


def _key(bound: Any) -> int:
    return hash((id(bound.__self__), bound.__func__))


def _socket_method(m: Method) -> bool:
    owner = type(m.bound.__self__)
    name = m.path.rsplit(".", 1)[1]
    return any(
        owner.__module__ == module and owner.__name__ == cls and name == method
        for module, cls, method, _ in SOCKET_TARGETS
    )


@pytest.fixture(scope="module")
def methods() -> list[Method]:
    return _all_methods()


def test_the_walk_finds_the_model_methods(methods: list[Method]) -> None:
    """Sanity: the walk sees the whole tree (hundreds of methods, the model ones included)."""
    assert len(methods) > 600
    for provider, names in MODEL_METHODS.items():
        seen = {m.path for m in methods if m.provider == provider}
        assert names <= seen, names - seen


def test_every_request_method_is_charged_or_reviewed_free(methods: list[Method]) -> None:
    """Each public method sends its requests through the patched request method (or is a
    patched websocket ``connect``, or on the short NO_REQUEST list), and every endpoint it can
    reach is a model endpoint, free by a reviewed rule, or a reviewed paid endpoint."""
    reach = _reachable(methods)
    silent: list[str] = []
    unreviewed: set[str] = set()
    unknown_path: set[str] = set()
    for m in methods:
        endpoints = reach[_key(m.bound)]
        if not endpoints:
            if not (_socket_method(m) or m.path in NO_REQUEST):
                silent.append(f"{m.provider}: {m.path}")
            continue
        for verb, path in endpoints:
            if path == "?" and verb not in {"GET", "DELETE"}:  # a read is free wherever it goes
                unknown_path.add(f"{m.provider}: {m.path}")
                continue
            decision = classify(m.provider, verb, path)
            if decision.kind == "paid":
                first = decision.segments[0] if decision.segments else ""
                if first not in PAID_REVIEWED[m.provider]:
                    unreviewed.add(f"{m.provider}: {verb} {path} ({m.path})")
    assert not silent, f"methods that send no request budgetkit sees: {sorted(silent)}"
    assert not unknown_path, f"methods whose request path the walk cannot read: {unknown_path}"
    assert not unreviewed, (
        "endpoints charged as unpriced paid calls that nobody reviewed; add a FREE_RULES rule "
        f"or PAID_REVIEWED entry: {sorted(unreviewed)}"
    )


def test_every_reviewed_paid_segment_is_still_used(methods: list[Method]) -> None:
    """The reviewed list stays short: an entry no endpoint needs any more fails the test."""
    reach = _reachable(methods)
    used: dict[str, set[str]] = {"openai": set(), "anthropic": set()}
    for m in methods:
        for verb, path in reach[_key(m.bound)]:
            decision = classify(m.provider, verb, path)
            if decision.kind == "paid" and decision.segments:
                used[m.provider].add(decision.segments[0])
    assert used == PAID_REVIEWED


def test_model_methods_reach_model_endpoints(methods: list[Method]) -> None:
    reach = _reachable(methods)
    for m in methods:
        if m.path in MODEL_METHODS[m.provider]:
            kinds = {classify(m.provider, v, p).kind for v, p in reach[_key(m.bound)]}
            assert "model" in kinds, (m.provider, m.path, reach[_key(m.bound)])


def test_free_rules_are_few_and_explained() -> None:
    assert 3 <= len(FREE_RULES) <= 8
    for rule in FREE_RULES:
        assert rule.name
        assert len(rule.why) > 20
    assert classify("openai", "POST", "/chat/completions").kind == "model"
    assert classify("anthropic", "POST", "/v1/messages?beta=true").kind == "model"
    assert classify("anthropic", "POST", "/v1/messages/count_tokens").kind == "free"
    assert classify("openai", "GET", "/models").kind == "free"
    assert classify("openai", "POST", "/threads/thread_1/runs").kind == "paid"
    assert classify("openai", "POST", "/threads/thread_1/messages").kind == "free"
    assert classify("openai", "POST", "/brand_new_endpoint").kind == "paid"  # fail closed
    assert set(MODEL_ENDPOINTS) == {"openai", "anthropic"}


def test_raw_and_streaming_response_variants_wrap_the_resource_methods() -> None:
    """``with_raw_response.X`` / ``with_streaming_response.X`` call the resource's own ``X``
    (with a header), so they go through the same request method and are charged alike."""
    checked = 0
    for _provider, client in _clients():
        for _path, resource in _resources(client, RESOURCE_BASES):
            for variant in ("with_raw_response", "with_streaming_response"):
                wrapper = getattr(resource, variant, None)
                if wrapper is None:  # a resource of websocket methods only
                    continue
                for name in dir(wrapper):
                    attr = getattr(wrapper, name)
                    if name.startswith("_") or not callable(attr) or isinstance(attr, type):
                        continue
                    inner = getattr(attr, "__wrapped__", None)
                    if inner is None:  # a nested resource's wrapper object
                        continue
                    assert getattr(inner, "__self__", None) is resource, (variant, name)
                    checked += 1
    assert checked > 500


def test_instrument_patches_the_request_methods_and_sockets() -> None:
    budgetkit.instrument()
    try:
        for cls in (OpenAISyncClient, OpenAIAsyncClient, AnthropicSyncClient, AnthropicAsyncClient):
            assert is_instrumented()
            assert type(cls.__dict__["request"]).__name__ == "_Patched", cls
        for module, cls_name, method, _ in SOCKET_TARGETS:
            owner = getattr(sys.modules[module], cls_name)
            assert type(owner.__dict__[method]).__name__ == "_Patched", (module, cls_name)
    finally:
        budgetkit.uninstrument()
    assert type(OpenAISyncClient.__dict__["request"]).__name__ == "function"


# ------------------------------------------------------------------------------ real calls
@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    budgetkit.uninstrument()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(usage=USAGE, reply='{"answer": "ok"}') as server:
        yield server


class Answer(BaseModel):
    answer: str


def _openai_calls(c: openai.OpenAI) -> dict[str, Callable[[], object]]:
    chat: dict[str, Any] = {"model": GPT, "messages": MESSAGES}

    def stream() -> object:
        with c.chat.completions.stream(**chat) as s:
            return s.get_final_completion()

    def stream_early_exit() -> object:
        with c.chat.completions.stream(**chat) as s:
            for _event in s:
                break
        return None

    def raw() -> object:
        return c.chat.completions.with_raw_response.create(**chat).parse()

    def raw_unparsed() -> object:
        return c.chat.completions.with_raw_response.create(**chat).headers

    def streaming_response() -> object:
        with c.chat.completions.with_streaming_response.create(**chat) as r:
            return r.parse()

    def streaming_response_lines() -> object:
        with c.chat.completions.with_streaming_response.create(
            **chat, stream=True, stream_options={"include_usage": True}
        ) as r:
            return list(r.iter_lines())

    def raw_stream() -> object:
        response = c.chat.completions.with_raw_response.create(
            **chat, stream=True, stream_options={"include_usage": True}
        )
        return list(response.parse())

    def responses_stream() -> object:
        with c.responses.stream(model=GPT, input="hi") as s:
            return s.get_final_response()

    return {
        "chat.completions.create": lambda: c.chat.completions.create(**chat),
        "chat.completions.parse": lambda: c.chat.completions.parse(**chat, response_format=Answer),
        "chat.completions.stream": stream,
        "chat.completions.stream, left early": stream_early_exit,
        "chat.completions.create(stream=True)": lambda: list(
            c.chat.completions.create(**chat, stream=True)
        ),
        "chat.completions.with_raw_response.create": raw,
        "chat.completions.with_raw_response.create, never parsed": raw_unparsed,
        "chat.completions.with_raw_response.create(stream=True)": raw_stream,
        "chat.completions.with_streaming_response.create": streaming_response,
        "chat.completions.with_streaming_response.create(stream=True).iter_lines": (
            streaming_response_lines
        ),
        "beta.chat.completions.create": lambda: c.beta.chat.completions.create(**chat),
        "responses.create": lambda: c.responses.create(model=GPT, input="hi"),
        "responses.parse": lambda: c.responses.parse(model=GPT, input="hi", text_format=Answer),
        "responses.stream": responses_stream,
        "responses.with_raw_response.create": lambda: c.responses.with_raw_response.create(
            model=GPT, input="hi"
        ).parse(),
        "beta.responses.create": lambda: c.beta.responses.create(model=GPT, input="hi"),
        "completions.create": lambda: c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="hi"
        ),
        "completions.create(stream=True)": lambda: list(
            c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=True)
        ),
        "embeddings.create": lambda: c.embeddings.create(
            model="text-embedding-3-small", input="hi"
        ),
    }


def _anthropic_calls(c: anthropic.Anthropic) -> dict[str, Callable[[], object]]:
    msg: dict[str, Any] = {"model": CLAUDE, "max_tokens": 400, "messages": MESSAGES}

    def stream() -> object:
        with c.messages.stream(**msg) as s:
            return s.get_final_message()

    def beta_stream() -> object:
        with c.beta.messages.stream(**msg) as s:
            return s.get_final_message()

    def streaming_response() -> object:
        with c.messages.with_streaming_response.create(**msg) as r:
            return r.parse()

    return {
        "messages.create": lambda: c.messages.create(**msg),
        "messages.create(stream=True)": lambda: list(c.messages.create(**msg, stream=True)),
        "messages.stream": stream,
        "messages.parse": lambda: c.messages.parse(**msg),
        "messages.with_raw_response.create": lambda: c.messages.with_raw_response.create(
            **msg
        ).parse(),
        "messages.with_streaming_response.create": streaming_response,
        "beta.messages.create": lambda: c.beta.messages.create(**msg),
        "beta.messages.stream": beta_stream,
        "beta.messages.parse": lambda: c.beta.messages.parse(**msg),
    }


OPENAI_CALLS = list(_openai_calls(openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9")))
ANTHROPIC_CALLS = list(
    _anthropic_calls(anthropic.Anthropic(api_key="x", base_url="http://127.0.0.1:9"))
)
#: Calls whose answer reports input tokens only.
INPUT_ONLY = {"embeddings.create"}
#: Calls that cannot report usage: charged as unmeasured.
NO_USAGE = {"chat.completions.stream, left early"}


def _check_charged(name: str, session: SessionBudget) -> None:
    usage = session.usage
    assert usage.llm_calls == 1, name
    if name in NO_USAGE:
        assert usage.unmeasured_calls == 1, name
        return
    expected = (USAGE[0], 0) if name in INPUT_ONLY else USAGE
    assert (usage.input_tokens, usage.output_tokens) == expected, name
    assert usage.cost_usd > 0, name
    assert usage.unmeasured_calls == 0, name
    assert session.boundary.snapshot().reserved_usd == 0, name


@pytest.mark.filterwarnings("ignore::budgetkit.UnmeasuredUsageWarning")
@pytest.mark.parametrize("name", OPENAI_CALLS)
def test_openai_model_call_is_charged_once(stub: StubServer, handoff_dir: Path, name: str) -> None:
    budgetkit.instrument()
    with openai.OpenAI(base_url=stub.base_url, api_key="t", max_retries=0) as client:
        with SessionBudget(handoff_dir=handoff_dir) as session:
            _openai_calls(client)[name]()
        assert len(stub.requests) == 1
    _check_charged(name, session)


@pytest.mark.parametrize("name", ANTHROPIC_CALLS)
def test_anthropic_model_call_is_charged_once(
    stub: StubServer, handoff_dir: Path, name: str
) -> None:
    budgetkit.instrument()
    with anthropic.Anthropic(base_url=stub.anthropic_base_url, api_key="t", max_retries=0) as c:
        with SessionBudget(handoff_dir=handoff_dir) as session:
            _anthropic_calls(c)[name]()
        assert len(stub.requests) == 1
    _check_charged(name, session)


def test_free_calls_are_not_charged(stub: StubServer, handoff_dir: Path) -> None:
    budgetkit.instrument()
    with (
        anthropic.Anthropic(base_url=stub.anthropic_base_url, api_key="t", max_retries=0) as c,
        SessionBudget(max_llm_calls=1, handoff_dir=handoff_dir) as session,
    ):
        for _ in range(3):
            assert c.messages.count_tokens(model=CLAUDE, messages=MESSAGES).input_tokens > 0
    assert len(stub.requests) == 3
    assert session.usage.llm_calls == 0


def _async_openai_calls(c: openai.AsyncOpenAI) -> dict[str, Callable[[], Awaitable[object]]]:
    chat: dict[str, Any] = {"model": GPT, "messages": MESSAGES}

    async def stream() -> object:
        async with c.chat.completions.stream(**chat) as s:
            return await s.get_final_completion()

    async def create_stream() -> object:
        return [chunk async for chunk in await c.chat.completions.create(**chat, stream=True)]

    async def raw() -> object:
        response = await c.chat.completions.with_raw_response.create(**chat)
        return response.parse()

    async def streaming_response() -> object:
        async with c.chat.completions.with_streaming_response.create(**chat) as r:
            return await r.parse()

    async def responses_stream() -> object:
        async with c.responses.stream(model=GPT, input="hi") as s:
            return await s.get_final_response()

    async def parse() -> object:
        return await c.chat.completions.parse(**chat, response_format=Answer)

    async def embeddings() -> object:
        return await c.embeddings.create(model="text-embedding-3-small", input="hi")

    return {
        "chat.completions.parse": parse,
        "chat.completions.stream": stream,
        "chat.completions.create(stream=True)": create_stream,
        "chat.completions.with_raw_response.create": raw,
        "chat.completions.with_streaming_response.create": streaming_response,
        "responses.stream": responses_stream,
        "embeddings.create": embeddings,
    }


def _async_anthropic_calls(
    c: anthropic.AsyncAnthropic,
) -> dict[str, Callable[[], Awaitable[object]]]:
    msg: dict[str, Any] = {"model": CLAUDE, "max_tokens": 400, "messages": MESSAGES}

    async def stream() -> object:
        async with c.messages.stream(**msg) as s:
            return await s.get_final_message()

    async def beta_stream() -> object:
        async with c.beta.messages.stream(**msg) as s:
            return await s.get_final_message()

    async def raw() -> object:
        response = await c.messages.with_raw_response.create(**msg)
        return await response.parse()

    async def beta_create() -> object:
        return await c.beta.messages.create(**msg)

    return {
        "messages.stream": stream,
        "beta.messages.stream": beta_stream,
        "messages.with_raw_response.create": raw,
        "beta.messages.create": beta_create,
    }


ASYNC_CALLS = [("openai", n) for n in _async_openai_calls(openai.AsyncOpenAI(api_key="x"))] + [
    ("anthropic", n) for n in _async_anthropic_calls(anthropic.AsyncAnthropic(api_key="x"))
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("provider", "name"), ASYNC_CALLS)
async def test_async_model_call_is_charged_once(
    stub: StubServer, handoff_dir: Path, provider: str, name: str
) -> None:
    budgetkit.instrument()
    client: Any
    if provider == "openai":
        client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="t", max_retries=0)
        call = _async_openai_calls(client)[name]
    else:
        client = anthropic.AsyncAnthropic(
            base_url=stub.anthropic_base_url, api_key="t", max_retries=0
        )
        call = _async_anthropic_calls(client)[name]
    async with SessionBudget(handoff_dir=handoff_dir) as session:
        await call()
    await client.close()
    assert len(stub.requests) == 1
    _check_charged(name, session)


# ------------------------------------------------------------------------------ budgetkit run
def test_budgetkit_run_counts_messages_stream_calls(stub: StubServer, tmp_path: Path) -> None:
    """``budgetkit run --max-llm-calls 2`` stops a script at its third ``messages.stream()``
    (before: all five ran and the run exited 0)."""
    script = tmp_path / "agent.py"
    script.write_text(
        textwrap.dedent(f"""
            import anthropic

            client = anthropic.Anthropic(
                base_url={stub.anthropic_base_url!r}, api_key="t", max_retries=0
            )
            for i in range(5):
                with client.messages.stream(
                    model="claude-haiku-4-5",
                    max_tokens=100,
                    messages=[{{"role": "user", "content": f"question {{i}}"}}],
                ) as stream:
                    stream.get_final_message()
                print("answered", i, flush=True)
        """)
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "budgetkit",
            "run",
            "--max-llm-calls",
            "2",
            "--handoff-dir",
            str(tmp_path / "handoffs"),
            "--",
            "python",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 3, out.stderr
    assert out.stdout.split("\n")[:2] == ["answered 0", "answered 1"]
    assert "max_llm_calls" in out.stderr
    assert len(stub.requests) == 2
