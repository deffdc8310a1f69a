"""Accounts: budgets that outlive sessions, per window, on every ledger.

Each limit holds per window on the in-process, embedded and Redis ledgers; windows reset on
an injected clock (fixed calendar windows in a timezone other than UTC, and rolling ones); a
new session of an exhausted account is refused up front with an error naming the account, the
limit, the window and its reset; a running session stops at its next boundary with the
account's reason in its handoff and on its span; processes sharing one account admit exactly
its limit; ``budgetkit accounts`` shows the windows.
"""

from __future__ import annotations

import contextvars
import json
import multiprocessing
import pickle
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from otel_fixtures import Otel, otel
from redis_fixtures import redis_server

from budgetkit import (
    Account,
    AccountExhaustedError,
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    Grant,
    SessionBudget,
    budget,
)
from budgetkit._windows import ROLLING_BUCKETS
from budgetkit.cli import main
from budgetkit.ledgers.embedded import EmbeddedLedger, EmbeddedLedgerServer
from budgetkit.ledgers.inprocess import InProcessLedger
from budgetkit.testing import FakeClock, fake_usage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["otel", "redis_server"]  # fixtures, re-exported for pytest

PRICES = {"acct-model": (Decimal(1), Decimal(2))}  # $1 / $2 per million tokens


@budget.step
def tool(i: int = 0) -> int:
    return i


@budget.step(cost_usd=Decimal("0.01"))
def paid_search() -> str:
    return "results"


@budget.llm_call
def chat(input_tokens: int = 1000, output_tokens: int = 500) -> dict[str, Any]:
    return fake_usage("acct-model", input_tokens, output_tokens)  # $0.002


def stopped(body: Callable[[], object]) -> BudgetExhausted:
    """The ``BudgetExhausted`` that ``body`` raises (it must raise one)."""
    try:
        body()
    except BudgetExhausted as exc:
        return exc
    raise AssertionError("no BudgetExhausted was raised")


def new_id() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------ where accounts live
@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedLedgerServer]:
    with EmbeddedLedgerServer() as server:
        yield server


@pytest.fixture(params=["in-process", "embedded", "redis"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ledger an account lives in (``None``: this process)."""
    monkeypatch.delenv("BUDGETKIT_LEDGER_URL", raising=False)
    if request.param == "in-process":
        return None
    if request.param == "embedded":
        server = request.getfixturevalue("embedded")
        return EmbeddedLedger(server.url)
    from redis_fixtures import RedisServer

    from budgetkit.ledgers.redis import RedisLedger

    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisLedger(server.url, key_prefix=f"acct-{uuid.uuid4().hex[:8]}:")


def run_until_stopped(
    account: Account, call: Callable[[], object], *, sessions: int = 50
) -> tuple[int, list[str]]:
    """Run sessions of ``account`` calling ``call`` until one is refused up front; the calls
    that returned, and how each session ended."""
    done, ends = 0, []
    for _ in range(sessions):
        try:
            with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
                for _ in range(5):  # a few calls per session: the account spans sessions
                    call()
                    done += 1
            ends.append("completed")
        except BudgetExhausted as exc:
            ends.append(exc.reason)
        except AccountExhaustedError as exc:
            ends.append(f"refused:{exc.reason}")
            return done, ends
    raise AssertionError(f"never refused: {ends}")


# ------------------------------------------------------------------ each limit
@pytest.mark.parametrize(
    ("limits", "call", "admitted", "reason"),
    [
        ({"max_steps": 17}, tool, 17, "account_max_steps"),
        ({"max_llm_calls": 9}, chat, 9, "account_max_llm_calls"),
        # 1500 tokens a call: the call that crosses 10000 (the 7th) completes, then the
        # next boundary stops its session
        ({"max_tokens": 10000}, chat, 7, "account_max_tokens"),
        # $0.002 a call: 0.025 is crossed by the 13th call
        ({"max_usd": Decimal("0.025")}, chat, 13, "account_max_usd"),
    ],
)
def test_each_limit_holds_across_sessions(
    where: Any, limits: dict[str, Any], call: Callable[[], object], admitted: int, reason: str
) -> None:
    account = Account(new_id(), ledger=where, **limits)
    done, ends = run_until_stopped(account, call)
    assert done == admitted
    assert ends[-1] == f"refused:{reason}"
    assert ends[-2] == reason  # the session running when it ran out stopped with the reason
    assert set(ends[:-2]) <= {"completed"}
    usage = account.usage()
    assert usage.reserved_usd == 0
    if "max_steps" in limits:
        assert usage.steps == admitted
    if "max_llm_calls" in limits:
        assert usage.llm_calls == admitted
    if "max_tokens" in limits:
        assert usage.total_tokens == admitted * 1500
    if "max_usd" in limits:
        assert usage.cost_usd == admitted * Decimal("0.002")


def test_a_reservation_must_fit_the_accounts_usd(where: Any) -> None:
    """$0.01 reserved per paid call: the 4th does not fit $0.035 ($0.03 + $0.01), in this
    session or the next. The account is not *over* ($0.03 <= $0.035), so a new session is
    entered, and stopped at its first paid call."""
    account = Account(new_id(), max_usd=Decimal("0.035"), ledger=where)
    ran = []

    def first() -> None:
        with SessionBudget(account=account, handoff_dir=None):
            for _ in range(5):
                ran.append(paid_search())

    def second() -> None:
        with SessionBudget(account=account, handoff_dir=None):
            tool()  # free: the account has room for it
            paid_search()

    assert (stopped(first).reason, len(ran)) == ("account_max_usd", 3)
    again = stopped(second)
    assert again.reason == "account_max_usd"
    assert again.usage.steps == 1
    usage = account.usage()
    assert (usage.cost_usd, usage.reserved_usd, usage.steps) == (Decimal("0.03"), 0, 4)


def test_an_account_without_limits_only_counts(where: Any) -> None:
    account = Account(new_id(), ledger=where)
    with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
        tool()
        chat()
    usage = account.usage()
    assert (usage.steps, usage.llm_calls, usage.total_tokens) == (1, 1, 1500)
    assert usage.cost_usd == Decimal("0.002")


# ------------------------------------------------------------------ windows
def test_a_fixed_day_resets_at_local_midnight_and_a_spanning_session_counts_in_both(
    where: Any,
) -> None:
    """A day in America/New_York: 6 steps before local midnight, 4 after, in one session.
    The old window keeps the 6, the new one starts with the 4; the reset is at local
    midnight (05:00 UTC in winter)."""
    if where is not None and type(where).__name__ == "EmbeddedLedger":
        pytest.skip("the embedded server keeps its own clock (time.time)")
    tz = ZoneInfo("America/New_York")
    before = datetime(2026, 12, 6, 23, 59, tzinfo=tz)
    clock = FakeClock(before.timestamp())
    account = Account(
        new_id(), max_steps=8, window="day", tz="America/New_York", ledger=where, clock=clock
    )
    usage = account.usage()
    assert usage.window == "day (America/New_York)"
    assert usage.window_start == datetime(2026, 12, 6, tzinfo=tz)
    assert usage.resets_at == datetime(2026, 12, 7, tzinfo=tz)
    assert usage.resets_at.astimezone(UTC) == datetime(2026, 12, 7, 5, tzinfo=UTC)
    with SessionBudget(account=account, handoff_dir=None):
        for i in range(6):
            tool(i)
        assert account.usage().steps == 6
        clock.advance(120)  # 00:01 local: a new window
        for i in range(4):
            tool(i)
        new = account.usage()
        assert new.steps == 4
        assert new.window_start == datetime(2026, 12, 7, tzinfo=tz)
    # 10 steps under max_steps=8: 6 counted in the old day, 4 in the new one


def test_a_month_in_a_timezone_other_than_utc(where: Any) -> None:
    if where is not None and type(where).__name__ == "EmbeddedLedger":
        pytest.skip("the embedded server keeps its own clock (time.time)")
    tz = ZoneInfo("Asia/Kolkata")  # +05:30
    clock = FakeClock(datetime(2026, 12, 31, 23, 0, tzinfo=tz).timestamp())
    account = Account(new_id(), max_steps=2, window="month", tz=tz, ledger=where, clock=clock)
    with SessionBudget(account=account, handoff_dir=None):
        tool()
        tool()
    with pytest.raises(AccountExhaustedError) as refused:
        SessionBudget(account=account, handoff_dir=None).__enter__()
    assert refused.value.resets_at == datetime(2027, 1, 1, tzinfo=tz)
    clock.advance(3600)  # 2027-01-01 00:00 in Kolkata, 18:30 UTC the day before
    with SessionBudget(account=account, handoff_dir=None):
        tool()
    assert account.usage().steps == 1


def test_a_rolling_window_forgets_each_charge_with_its_sub_bucket(where: Any) -> None:
    """A rolling hour: 24 sub-buckets of 150 s. A charge 10 s into its sub-bucket counts for
    3590 s (at least 3450 and at most 3600 s), then drops out."""
    if where is not None and type(where).__name__ == "EmbeddedLedger":
        pytest.skip("the embedded server keeps its own clock (time.time)")
    step = 3600 / ROLLING_BUCKETS
    start = 1_800_000_000 // step * step + 10
    clock = FakeClock(start)
    account = Account(
        new_id(),
        max_steps=3,
        window="hour",
        rolling=True,
        tz="Europe/Paris",
        ledger=where,
        clock=clock,
    )
    with SessionBudget(account=account, handoff_dir=None):
        for i in range(3):
            tool(i)
    clock.advance(1800)
    with pytest.raises(AccountExhaustedError) as refused:
        SessionBudget(account=account, handoff_dir=None).__enter__()
    assert refused.value.window == "rolling hour"
    clock.advance(3590 - 1800 - 1)  # 1 s before its sub-bucket leaves the hour
    assert account.usage().steps == 3
    clock.advance(1)
    assert account.usage().steps == 0
    with SessionBudget(account=account, handoff_dir=None):
        tool()
    assert account.usage().steps == 1


def test_a_timedelta_window_is_aligned_to_the_epoch() -> None:
    clock = FakeClock(1_800_000_000 + 100)  # 1_800_000_000 is a multiple of 900
    account = Account(new_id(), window=timedelta(minutes=15), clock=clock)
    usage = account.usage()
    assert usage.window_start == datetime.fromtimestamp(1_800_000_000, UTC)
    assert usage.resets_at == datetime.fromtimestamp(1_800_000_900, UTC)


# ------------------------------------------------------------------ stopping
def test_the_up_front_refusal_names_account_reason_window_and_reset() -> None:
    clock = FakeClock(datetime(2026, 12, 6, 15, 30, tzinfo=UTC).timestamp())
    account = Account("alice@example.com", max_usd=Decimal("0.004"), clock=clock)
    with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
        chat()
        chat()
        chat()  # crosses: $0.006
    entered = []
    session = SessionBudget(account=account, handoff_dir=None, prices=PRICES)
    with pytest.raises(AccountExhaustedError) as caught, session:
        entered.append(True)
    assert entered == []  # refused before the block ran
    exc = caught.value
    assert exc.account_id == "alice@example.com"
    assert exc.reason == "account_max_usd"
    assert exc.window == "day (UTC)"
    assert exc.resets_at == datetime(2026, 12, 7, tzinfo=UTC)
    text = str(exc)
    for part in (
        "'alice@example.com'",
        "day (UTC)",
        "max_usd",
        "$0.006 of $0.004 spent",
        "2026-12-07T00:00:00+00:00",
    ):
        assert part in text
    again = pickle.loads(pickle.dumps(exc))
    assert (again.account_id, again.reason, again.resets_at) == (
        exc.account_id,
        exc.reason,
        exc.resets_at,
    )


def test_a_running_session_stops_at_its_next_boundary_with_the_accounts_reason(
    tmp_path: Any, otel: Otel
) -> None:
    """Two sessions of one account; the other one spends the rest: this one's next step is
    refused, its handoff and span say ``account_max_usd`` and name the account."""
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp())
    account = Account("team-7", max_usd=Decimal("0.005"), clock=clock)
    mine = SessionBudget(account=account, handoff_dir=tmp_path, prices=PRICES)
    other = SessionBudget(account=account, handoff_dir=None, prices=PRICES)

    def spend() -> None:
        with other:
            for _ in range(3):
                chat()  # $0.006: over

    def agent() -> None:
        with mine:
            tool()
            again = Account("team-7", max_usd=Decimal("0.005"), clock=clock)
            with SessionBudget(account=again, handoff_dir=None, prices=PRICES):
                pass  # entered and left: the account has room
            contextvars.Context().run(spend)  # another session, not nested in this one
            tool()  # refused here

    exc = stopped(agent)
    assert exc.reason == "account_max_usd"
    assert exc.handoff.reason == "account_max_usd"
    section = exc.handoff.extra["account"]
    assert section["id"] == "team-7"
    assert section["window"] == "day (UTC)"
    assert section["resets_at"] == "2026-12-07T00:00:00+00:00"
    assert section["used"] == "$0.006 of $0.005 spent"
    assert "account 'team-7' over its day (UTC) window's max_usd" in str(exc)
    assert exc.usage.steps == 1
    assert exc.handoff_path is not None
    assert json.loads(exc.handoff_path.read_text())["reason"] == "account_max_usd"
    spans = [
        s
        for s in otel.spans()
        if s.name == "budgetkit.session"
        and s.attributes
        and s.attributes.get("budgetkit.session.id") == mine.session_id
    ]
    [span] = spans
    assert span.attributes is not None
    assert span.attributes["budgetkit.session.stop_reason"] == "account_max_usd"
    [event] = [e for e in span.events if e.name == "budgetkit.budget.exhausted"]
    assert dict(event.attributes or {})["budgetkit.budget.reason"] == "account_max_usd"


def test_a_joined_session_knows_its_account(where: Any) -> None:
    """A worker joins a session of an account by id (another process, as far as the ledger
    knows): its calls charge the account, and when the account stops it, its handoff names
    the account."""
    if where is None:
        pytest.skip("an in-process session cannot be joined")
    account = Account(new_id(), max_steps=3, ledger=where)
    with SessionBudget(account=account, handoff_dir=None) as creator:
        tool()
        worker = SessionBudget.join(creator.session_id, ledger=where, trust_id=True)

        def work() -> None:
            with worker:
                for i in range(5):
                    tool(i)

        exc = stopped(lambda: contextvars.Context().run(work))
    assert exc.reason == "account_max_steps"
    assert exc.usage.steps == 3
    assert exc.handoff.extra["account"]["id"] == account.account_id
    assert exc.handoff.extra["account"]["used"] == "3 of 3 steps used"
    assert account.usage().steps == 3


def test_a_grant_does_not_lift_an_accounts_limit() -> None:
    asked = []

    def policy(request: Any) -> Grant:
        asked.append(request)
        return Grant(steps=10)

    account = Account(new_id(), max_steps=2)

    def agent() -> None:
        with SessionBudget(account=account, max_steps=10, on_exhausted=policy, handoff_dir=None):
            for i in range(5):
                tool(i)

    assert stopped(agent).reason == "account_max_steps"
    assert asked == []


def test_nested_sessions_of_one_account_charge_it_once() -> None:
    account = Account(new_id(), max_steps=10)
    with (
        SessionBudget(account=account, handoff_dir=None),
        SessionBudget(account=account, handoff_dir=None),
    ):
        tool()
        tool()
    assert account.usage().steps == 2


def test_one_id_in_two_processes_ledgers_is_two_accounts() -> None:
    """An in-process account belongs to its ledger: another ledger counts its own."""
    ledger = InProcessLedger()
    account_id = new_id()
    first = Account(account_id, max_steps=1)
    with SessionBudget(account=first, handoff_dir=None):
        tool()
    other = ledger.account_usage(first.terms, first.terms.buckets())
    assert other[0].steps == 0


def test_a_session_and_its_account_share_one_ledger(embedded: EmbeddedLedgerServer) -> None:
    account = Account(new_id(), max_steps=1)
    with pytest.raises(BudgetConfigError, match="share one ledger"):
        SessionBudget(account=account, ledger=EmbeddedLedger(embedded.url))
    shared = Account(new_id(), max_steps=1, ledger=EmbeddedLedger(embedded.url))
    session = SessionBudget(account=shared)
    assert session.ledger is shared.ledger


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"account_id": ""}, BudgetConfigError),
        ({"account_id": 7}, BudgetTypeError),
        ({"max_steps": 0}, BudgetConfigError),
        ({"max_usd": -1}, BudgetConfigError),
        ({"window": "week"}, BudgetConfigError),
        ({"window": timedelta(seconds=0.5)}, BudgetConfigError),
        ({"window": 3600}, BudgetTypeError),
        ({"tz": "Mars/Olympus"}, BudgetConfigError),
        ({"rolling": "yes"}, BudgetTypeError),
    ],
)
def test_bad_accounts_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    values: dict[str, Any] = {"account_id": "a", **kwargs}
    account_id = values.pop("account_id")
    with pytest.raises(error):
        Account(account_id, **values)
    with pytest.raises(BudgetTypeError):
        SessionBudget(account="alice")  # type: ignore[arg-type]


# ------------------------------------------------------------------ processes
def _spend_steps(url: str, account_id: str, go: Any) -> int:
    """Sessions of one account until it refuses one; the steps admitted here."""
    account = Account(account_id, max_steps=300, ledger=_ledger(url))
    go.wait()
    admitted = 0
    while True:
        try:
            with SessionBudget(account=account, handoff_dir=None, max_steps=25):
                for i in range(25):
                    tool(i)
                    admitted += 1
        except BudgetExhausted:
            continue
        except AccountExhaustedError:
            return admitted


def _ledger(url: str) -> Any:
    from budgetkit.ledgers import ledger_for_url

    return ledger_for_url(url)


def race(url: str, processes: int) -> tuple[int, list[int]]:
    account_id = new_id()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(processes) as pool:
            results = pool.starmap_async(_spend_steps, [(url, account_id, go)] * processes)
            go.set()
            admitted = results.get(180)
    account = Account(account_id, max_steps=300, ledger=_ledger(url))
    return account.usage().steps, admitted


def test_processes_share_one_account_on_the_embedded_ledger(
    embedded: EmbeddedLedgerServer,
) -> None:
    """4 processes, sessions of 25 steps, one account of 300 steps a day: exactly 300."""
    total, admitted = race(embedded.url, 4)
    assert sum(admitted) == 300
    assert total == 300


def test_eight_processes_hold_one_accounts_daily_limit_on_redis(redis_server: Any) -> None:
    """8 processes, each running sessions of 25 steps of one account (300 steps a day) on
    one Redis until the account refuses them: exactly 300 steps are admitted in all."""
    total, admitted = race(redis_server.url, 8)
    assert sum(admitted) == 300
    assert total == 300


# ------------------------------------------------------------------ the command
def test_the_accounts_command_shows_each_window(
    embedded: EmbeddedLedgerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = EmbeddedLedger(embedded.url)
    hostile = f"evil\x1b[31m-{uuid.uuid4().hex[:6]}\n"
    account = Account(hostile, max_steps=10, max_usd=Decimal("1"), ledger=ledger)
    with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
        tool()
        tool()
        chat()
    assert main(["accounts", "--ledger", embedded.url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # control characters are escaped, never sent to the terminal
    assert repr(hostile)[1:-1] in out
    assert "steps" in out
    assert "2 of 10 (20.0%)" in out
    assert "$0.0020 of $1.0000 (0.2%)" in out
    assert "day (UTC)" in out
    assert main(["accounts", "--ledger", embedded.url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [mine] = [a for a in doc if a["account_id"] == hostile]
    assert mine["steps"] == 2
    assert mine["llm_calls"] == 1
    assert mine["cost_usd"] == "0.002"
    assert mine["limits"] == {"max_steps": 10, "max_usd": "1"}
    assert mine["window"] == "day (UTC)"
    assert datetime.fromisoformat(mine["resets_at"]) > datetime.now(UTC)


def test_the_accounts_command_reads_redis(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On Redis (the URL from $BUDGETKIT_LEDGER_URL), a daily and a rolling account."""
    from budgetkit.ledgers.redis import RedisLedger

    monkeypatch.setenv("BUDGETKIT_LEDGER_URL", redis_server.url)
    ledger = RedisLedger(redis_server.url)
    daily = Account(new_id(), max_llm_calls=4, ledger=ledger)
    rolling = Account(new_id(), max_tokens=10_000, window="hour", rolling=True, ledger=ledger)
    for account in (daily, rolling):
        with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
            chat()
    assert main(["accounts", "--json"]) == 0
    doc = {a["account_id"]: a for a in json.loads(capsys.readouterr().out)}
    assert doc[daily.account_id]["llm_calls"] == 1
    assert doc[daily.account_id]["limits"] == {"max_llm_calls": 4}
    assert doc[rolling.account_id]["window"] == "rolling hour"
    assert doc[rolling.account_id]["total_tokens"] == 1500
    assert main(["accounts"]) == 0
    out = capsys.readouterr().out
    assert f"account '{daily.account_id}'" in out
    assert "1 of 4 (25.0%)" in out
    assert "1500 of 10000 (15.0%)" in out


def test_the_accounts_command_needs_a_ledger(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BUDGETKIT_LEDGER_URL", raising=False)
    assert main(["accounts"]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_a_session_of_an_account_admits_exactly_on_an_allotment_ledger(redis_server: Any) -> None:
    """``RedisLedger(allotment=...)`` admits steps from local leases, which cannot see an
    account's window: a session of an account admits every call on the server instead, so
    two sessions of one account (max_steps=3) interleaved admit exactly 3."""
    from budgetkit.ledgers.redis import RedisLedger

    ledger = RedisLedger(redis_server.url, key_prefix=f"al-{uuid.uuid4().hex[:8]}:", allotment=10)
    account = Account(new_id(), max_steps=3, ledger=ledger)
    other = SessionBudget(account=account, handoff_dir=None)

    def one_step() -> None:
        with other:
            tool()

    def agent() -> None:
        with SessionBudget(account=account, handoff_dir=None):
            tool()
            tool()
            contextvars.Context().run(one_step)
            tool()  # the account's third step was the other session's

    assert stopped(agent).reason == "account_max_steps"
    assert account.usage().steps == 3


# ------------------------------------------------------------------ Redis memory
@pytest.mark.parametrize("rolling", [False, True])
def test_an_accounts_redis_memory_is_constant_per_window(redis_server: Any, rolling: bool) -> None:
    """30 sessions of one account, 5 charged LLM calls each: a fixed window is one hash,
    expiring one window length after its end; a rolling window's sub-buckets each expire
    when no window counts them any more (so at most 25 live); with the config, that is all
    the account keeps, whatever the number of sessions and calls."""
    from budgetkit._windows import ROLLING_BUCKETS
    from budgetkit.ledgers.redis import RedisLedger

    prefix = f"mem-{uuid.uuid4().hex[:8]}:"
    ledger = RedisLedger(redis_server.url, key_prefix=prefix)
    clock = FakeClock(1_800_000_000)
    account = Account(new_id(), window="hour", rolling=rolling, ledger=ledger, clock=clock)
    for _ in range(30):
        with SessionBudget(account=account, handoff_dir=None, prices=PRICES):
            for _ in range(5):
                chat()
        clock.advance(150 if rolling else 10)  # a rolling hour: a new sub-bucket each time
    tag = account.terms.tag
    windows = sorted(ledger.client.scan_iter(f"{prefix}{{a:{tag}}}:w:*"))
    others = {
        k for k in ledger.client.scan_iter(f"{prefix}{{a:{tag}}}:*") if b":s:" not in k
    } - set(windows)
    assert len(others) == 1  # the config (no call in flight: no reservations key)
    usage = account.usage()
    if not rolling:
        [window] = windows
        assert usage.llm_calls == 150
        resets = usage.resets_at.timestamp()
        assert ledger.client.expiretime(window) == resets + 3600
        return
    assert len(windows) == 30  # the server's clock has not moved: none expired yet
    assert usage.llm_calls == (ROLLING_BUCKETS - 1) * 5  # the current sub-bucket is empty
    step = 3600 // ROLLING_BUCKETS
    for key in windows:
        bucket = int(key.rsplit(b":", 1)[1])
        assert ledger.client.expiretime(key) == (bucket + ROLLING_BUCKETS + 1) * step


def test_a_chain_gives_the_account_back_no_more_than_the_session_held() -> None:
    """Releasing more than a session holds (record or release of a chain) frees only what it
    held in the account too, as a single session's release does: the reservations of the
    account's other sessions stay held."""
    from budgetkit._limits import Limits
    from budgetkit.ledgers.inprocess import record_together, release_together

    ledger = InProcessLedger()
    terms = Account(new_id(), max_usd=Decimal("1")).terms
    a = ledger.create(new_id(), Limits.build(), account=terms)
    b = ledger.create(new_id(), Limits.build(), account=terms)
    for session in (a, b):
        assert session.admit("llm", 100) is None
    assert ledger.account_usage(terms, terms.buckets())[1] == 200
    release_together([a], 150)
    assert ledger.account_usage(terms, terms.buckets())[1] == 100  # b's 100 still held
    assert b.admit("llm", 100) is None
    record_together([b], None, 0, 500)
    assert ledger.account_usage(terms, terms.buckets())[1] == 0
    assert a.reserved == 0
    assert b.reserved == 0


def test_reading_an_account_by_a_later_clock_forgets_nothing_it_counted() -> None:
    """A read names its window by the reader's clock; it never drops buckets the account
    counted, so a reader whose clock runs ahead cannot reopen a used-up window."""
    noon = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
    account_id = new_id()
    account = Account(account_id, max_steps=2, clock=FakeClock(noon))
    with SessionBudget(account=account, handoff_dir=None):
        tool()
        tool()
    ahead = Account(account_id, max_steps=2, clock=FakeClock(noon + 2 * 86400))
    assert ahead.usage().steps == 0  # its own window, two days on
    assert account.usage().steps == 2
    with pytest.raises(AccountExhaustedError):
        SessionBudget(account=account, handoff_dir=None).__enter__()


def test_running_open_without_an_unreachable_account_says_so() -> None:
    """on_ledger_error='open' with the account's ledger unreachable: the session runs in
    this process, and the warning names the account it neither checks nor charges."""
    from budgetkit.exceptions import LedgerUnavailableWarning
    from budgetkit.ledgers.redis import RedisLedger

    account = Account(new_id(), max_steps=1, ledger=RedisLedger("redis://127.0.0.1:1/0"))
    with (
        pytest.warns(LedgerUnavailableWarning, match=rf"without account '{account.account_id}'"),
        SessionBudget(account=account, on_ledger_error="open", handoff_dir=None),
    ):
        tool()
