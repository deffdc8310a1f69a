"""An embedded ledger: one process serves its sessions to the processes it starts.

:class:`EmbeddedLedgerServer` holds sessions of an
:class:`~budgetkit.ledgers.inprocess.InProcessLedger` and applies each operation its clients
send with that ledger's own methods, under its lock, so the rules are exactly the in-process
ones (``budgetkit._policy``); this module is only transport. It listens on a Unix socket in
a private (0700) temporary directory. :class:`EmbeddedLedger` is a client: any process that
can open the socket (the server's own included) creates or joins sessions there by id, like
a :class:`~budgetkit.ledgers.redis.RedisLedger`, and N processes racing on ``max_steps=K``
admit exactly K. ``budgetkit run`` serves its session this way when no Redis is configured.

URL: ``budgetkit+unix:///path/to/ledger.sock``. ``$BUDGETKIT_LEDGER_URL`` may name one.

Requests and answers are one line of JSON each. Every mutating request carries an operation
id; the server remembers recent answers, so a resent operation is applied once. A process
that forks keeps its handles: the child opens its own connection on its first operation
(``os.register_at_fork``) and is a holder of its own. Reservations are held per connection;
when a connection closes while holding some (its process died mid-call), the held amount is
charged as spent, never given back as if unused.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import unquote, urlsplit

from .._files import check_session_id
from .._limits import LIMIT_NAMES, Limits
from .._policy import Counters, Tally
from .._terms import AccountTerms
from ..exceptions import (
    BudgetConfigError,
    BudgetTypeError,
    LedgerError,
    LedgerUnavailableError,
    SessionNotFoundError,
)
from ._snapshot import LedgerSnapshot, snapshot_of
from .inprocess import LOCK, InProcessLedger, InProcessLedgerSession

if TYPE_CHECKING:
    import io
    from collections.abc import Mapping
    from types import TracebackType

    from .._terms import AccountUsage
    from .._usage import Counts
    from .._windows import Buckets

__all__ = [
    "SCHEME",
    "EmbeddedLedger",
    "EmbeddedLedgerServer",
    "EmbeddedLedgerSession",
    "private_directory",
]

#: The URL scheme of an embedded ledger: ``budgetkit+unix:///path/to/ledger.sock``.
SCHEME = "budgetkit+unix"

#: Operation ids remembered by a server (the oldest are forgotten first).
_REMEMBERED = 65536

#: Longest socket path we use (AF_UNIX allows 104-108 bytes, depending on the system).
_MAX_PATH = 100

_COUNTER_FIELDS = tuple(f.name for f in fields(Counters))
_TALLY_FIELDS = tuple(f.name for f in fields(Tally))


def private_directory() -> Path:
    """A new temporary directory only this user can enter (mode 0700), short enough for a
    Unix socket path inside it."""
    directory = tempfile.mkdtemp(prefix="budgetkit-")
    if len(directory) > _MAX_PATH - 20:  # a long $TMPDIR (macOS)
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="budgetkit-", dir="/tmp")
    return Path(directory)


def url_of(path: str | os.PathLike[str]) -> str:
    """The URL of the embedded ledger listening at ``path``."""
    return f"{SCHEME}://{Path(path).resolve()}"


def path_of(url: str) -> Path:
    """The socket path of a ``budgetkit+unix://`` URL."""
    if not isinstance(url, str):
        raise BudgetTypeError(f"an embedded ledger URL must be a str, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme != SCHEME or parts.netloc or not parts.path.startswith("/"):
        raise BudgetConfigError(
            f"not an embedded ledger URL: {url!r} (expected {SCHEME}:///absolute/path/to/socket)"
        )
    return Path(unquote(parts.path))


# ---------------------------------------------------------------------------------- server
class _Served:
    """One session a server holds, and what it knows about its clients."""

    __slots__ = ("config", "held", "session", "writer")

    def __init__(self, session: InProcessLedgerSession, config: dict[str, Any]) -> None:
        self.session = session
        self.config = config
        self.writer: str | None = None
        #: connection number -> units of USD its reservations hold
        self.held: dict[int, int] = {}


class _RefusedError(Exception):
    """A request the server answers with an error (kind, message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class EmbeddedLedgerServer:
    """Serves sessions to other processes over a Unix socket, from a thread of this process.

    Args:
        directory: where the socket is made; default a new private temporary directory
            (mode 0700), removed by :meth:`close`. Only its owner's processes can connect.

    Use as a context manager, or call :meth:`start` and :meth:`close`. Its :attr:`url` is
    what clients (:class:`EmbeddedLedger`) connect to. A forked child of the serving
    process does not serve: only the process that started the server does.

    .. versionadded:: 0.1.0
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own_directory = directory is None
        self.directory = private_directory() if directory is None else Path(directory)
        self.path = self.directory / "ledger.sock"
        if len(str(self.path)) > _MAX_PATH:
            raise BudgetConfigError(f"socket path too long for a Unix socket: {self.path}")
        self.url = url_of(self.path)
        self._ledger = InProcessLedger()
        self._sessions: dict[str, _Served] = {}
        self._answers: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._listener: socket.socket | None = None
        self._connections: dict[int, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pid = os.getpid()
        _SERVERS.add(self)

    def __repr__(self) -> str:
        return f"<EmbeddedLedgerServer {self.url}>"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Listen and serve in a daemon thread."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(128)
            listener.settimeout(0.2)  # the accept loop notices close() this often
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="budgetkit-ledger", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close every connection, remove the socket (and its directory, if
        the server made it). In a forked child, only drop the inherited copies."""
        self._stopping.set()
        owner = os.getpid() == self._pid
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                if owner:
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                if owner:
                    self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
            self._listener.close()
            self._listener = None
        if not owner:
            return
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def after_fork_in_child(self) -> None:
        """In a forked child: give up the inherited sockets (the parent keeps serving)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            if self._listener is not None:
                self._listener.close()
        self._listener = None
        for conn in self._connections.values():
            with contextlib.suppress(OSError):
                conn.close()
        self._connections = {}
        self._lock = threading.Lock()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ serving
    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            conn.settimeout(None)
            number = next(self._numbers)
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections[number] = conn
            threading.Thread(
                target=self._serve, args=(conn, number), name="budgetkit-ledger-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            with conn.makefile("rwb") as stream:
                for line in stream:
                    stream.write(self._answer(line, number))
                    stream.flush()
        except (OSError, ValueError):
            pass  # the client went away
        finally:
            with self._lock:
                self._connections.pop(number, None)
            with contextlib.suppress(OSError):
                conn.close()
            if not self._stopping.is_set():
                self._settle_dead(number)

    def _settle_dead(self, number: int) -> None:
        """A connection closed holding reservations: its calls may have spent the money,
        so what it held is charged as spent (an unmeasured call), never released."""
        with self._lock:
            held = [(s, s.held.pop(number)) for s in self._sessions.values() if number in s.held]
        for served, amount in held:
            if amount:
                served.session.record(None, amount, release=amount)

    def _answer(self, line: bytes, number: int) -> bytes:
        try:
            request = json.loads(line)
        except ValueError as exc:
            result: dict[str, Any] = {"error": "bad_request", "message": f"not JSON: {exc}"}
        else:
            result = self.handle(request, number)
        return json.dumps(result, separators=(",", ":")).encode() + b"\n"

    def handle(self, request: object, number: int = 0) -> dict[str, Any]:
        """Apply one request for connection ``number`` (0: this process, without a socket);
        ``{"ok": answer}`` or ``{"error": kind, "message": text}``."""
        try:
            if self._stopping.is_set():
                raise _RefusedError("unavailable", "the server is closed")
            if not isinstance(request, dict):
                raise _RefusedError("bad_request", "a request is a JSON object")
            return {"ok": self._apply(request, number)}
        except _RefusedError as exc:
            return {"error": exc.kind, "message": str(exc)}
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            return {"error": "bad_request", "message": f"{type(exc).__name__}: {exc}"}

    def _apply(self, request: dict[str, Any], number: int) -> Any:
        op = request["op"]
        if op == "account_usage":
            return self._account_usage(request)
        if op == "accounts":
            return [
                [account.spec(), *self._account_usage({"account": account.spec()})]
                for account in list(self._ledger.known.values())
            ]
        session_id = request["session"]
        if op == "create":
            return self._create(session_id, request)
        with self._lock:
            served = self._sessions.get(session_id)
        if served is None:
            raise _RefusedError("not_found", f"session {session_id!r} is not in this ledger")
        if op == "join":
            return served.config
        op_id = request.get("op_id")
        if op_id:
            with self._lock:
                if op_id in self._answers:
                    return self._answers[op_id]
        result = self._operate(served, op, request, number)
        if op_id:
            with self._lock:
                self._answers[op_id] = result
                if len(self._answers) > _REMEMBERED:
                    self._answers.popitem(last=False)
        return result

    def _account_usage(self, request: dict[str, Any]) -> list[Any]:
        """``[tally fields, reserved]`` of an account's window (the buckets the client
        names, else the server's current window)."""
        account = AccountTerms.from_spec(request["account"])
        buckets = account.buckets()
        counted = request.get("counted")
        if counted is not None:
            buckets = buckets._replace(counted=tuple(int(i) for i in counted))
        tally, reserved = self._ledger.account_usage(account, buckets)
        return [[getattr(tally, name) for name in _TALLY_FIELDS], reserved]

    def _create(self, session_id: str, request: dict[str, Any]) -> Any:
        config = request["config"]
        limits = _limits(config["limits"])
        usd_room = request.get("usd_room")
        account = config.get("account")
        session = self._ledger.create(
            check_session_id(session_id),
            limits,
            name=config.get("name"),
            reserve_for_wrapup=config.get("reserve_for_wrapup"),
            parent_session_id=config.get("parent_session_id"),
            step_room=request.get("step_room"),
            usd_room=None if usd_room is None else Decimal(usd_room),
            extra=config.get("extra"),
            account=None if account is None else AccountTerms.from_spec(account),
        )
        with self._lock:
            if session_id in self._sessions:
                raise _RefusedError("exists", f"session {session_id!r} already exists")
            self._sessions[session_id] = _Served(session, config)
        return True

    def _operate(self, served: _Served, op: str, request: dict[str, Any], number: int) -> Any:
        session = served.session
        if op == "admit":
            reserve = request.get("reserve")
            reason = session.admit(
                request.get("kind"),
                reserve,
                name=request.get("name", ""),
                wrapup=bool(request.get("wrapup")),
                tool_cap=request.get("tool_cap"),
                digest=request.get("digest"),
            )
            if reason is None and reserve:
                with self._lock:
                    served.held[number] = served.held.get(number, 0) + reserve
            return [reason, session.errors_in_a_row > 0]
        if op == "record":
            counts = request.get("counts")
            release = self._take(served, number, request.get("release") or 0)
            return session.record(
                None if counts is None else tuple(counts), request.get("cost"), release=release
            )
        if op == "release":
            session.release(self._take(served, number, request["amount"]))
            return None
        if op == "fail":
            return session.fail()
        if op == "succeed":
            session.succeed()
            return None
        if op == "trip":
            session.trip(request["reason"])
            return None
        if op == "latch":
            return session.latch(request["reason"], request.get("name", ""))
        if op == "extend":
            from .._limits import Limits

            raw = dict(request["limits"])
            if isinstance(raw.get("max_usd"), str):
                raw["max_usd"] = Decimal(raw["max_usd"])
            usd_room = request.get("usd_room")
            return session.extend(
                Limits.build(**raw),
                step_room=request.get("step_room"),
                usd_room=None if usd_room is None else Decimal(usd_room),
            )
        if op == "claim":
            with self._lock:
                if served.writer is None:
                    served.writer = request["holder"]
                return served.writer == request["holder"]
        if op == "snapshot":
            with LOCK:
                values = {name: getattr(session, name) for name in _COUNTER_FIELDS}
                elapsed = session.elapsed()
            return {"counters": values, "elapsed": elapsed, "writer": served.writer}
        if op == "close":
            session.close()
            return None
        raise _RefusedError("bad_request", f"unknown operation {op!r}")

    def _take(self, served: _Served, number: int, amount: int) -> int:
        """What a connection may give back: never more than it holds."""
        if not isinstance(amount, int) or amount < 0:
            raise _RefusedError(
                "bad_request", f"an amount must be a non-negative int, got {amount!r}"
            )
        with self._lock:
            mine = served.held.get(number, 0)
            taken = min(mine, amount)
            if mine - taken:
                served.held[number] = mine - taken
            else:
                served.held.pop(number, None)
        return taken


def _limits(raw: Mapping[str, Any]) -> Limits:
    values = {key: raw.get(key) for key in LIMIT_NAMES}
    if isinstance(values["max_usd"], str):
        values["max_usd"] = Decimal(values["max_usd"])
    return Limits.build(**values)


# ---------------------------------------------------------------------------------- client
class EmbeddedLedger:
    """A client of an :class:`EmbeddedLedgerServer`: sessions kept by the serving process.

    Args:
        url: ``budgetkit+unix:///path/to/ledger.sock`` (the server's :attr:`url`).
        timeout: seconds to wait for an answer; then the ledger is unavailable.

        server: the server, when it runs in this process: requests are applied without
            the socket (a forked child of this process uses the socket).

    Thread-safe: the threads of a process share one connection, one request at a time.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, url: str, *, timeout: float = 30.0, server: EmbeddedLedgerServer | None = None
    ) -> None:
        self.path = path_of(url)
        self.url = url
        if server is not None and server.url != url:
            raise BudgetConfigError(f"server {server!r} does not serve {url!r}")
        self._server = server
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise BudgetConfigError(f"timeout must be a positive number of seconds, got {timeout}")
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stream: io.BufferedRWPair | None = None
        self._pid = os.getpid()
        _CLIENTS.add(self)

    def __repr__(self) -> str:
        return f"<EmbeddedLedger {self.url}>"

    def __del__(self) -> None:
        # Also at interpreter exit, when module globals may be gone: no contextlib here.
        for closable in (getattr(self, "_stream", None), getattr(self, "_sock", None)):
            if closable is not None:
                try:  # noqa: SIM105
                    closable.close()
                except (OSError, ValueError):
                    pass

    # ------------------------------------------------------------------ plumbing
    def after_fork_in_child(self) -> None:
        """In a forked child: leave the parent's connection to the parent; the next request
        opens one of this process's own."""
        self._lock = threading.Lock()
        self._drop()
        self._server = None  # it serves from the parent
        self._pid = os.getpid()

    def _drop(self) -> None:
        stream, sock = self._stream, self._sock
        self._stream = self._sock = None
        with contextlib.suppress(OSError, ValueError):
            if stream is not None:
                stream.close()
        with contextlib.suppress(OSError):
            if sock is not None:
                sock.close()  # closes this process's descriptor only: no shutdown()

    def _connection(self) -> io.BufferedRWPair:
        stream = self._stream
        if stream is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
            stream = self._stream = sock.makefile("rwb")
        return stream

    def call(self, request: dict[str, Any]) -> Any:
        """Send one request and return its answer; connection trouble raises
        :class:`~budgetkit.LedgerUnavailableError`."""
        if self._pid != os.getpid():  # forked without the at-fork hook (fork() from C)
            self.after_fork_in_child()
        if self._server is not None:
            return self._result(request, self._server.handle(request))
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                stream = self._connection()
                stream.write(line)
                stream.flush()
                reply = stream.readline()
                if not reply.endswith(b"\n"):
                    raise ConnectionError("the ledger closed the connection")
            except (OSError, ValueError) as exc:
                self._drop()
                raise LedgerUnavailableError(
                    f"budgetkit: the embedded ledger at {self.url} is unavailable "
                    f"({type(exc).__name__}: {exc}); the process serving it (budgetkit run) "
                    "may have exited",
                    url=self.url,
                ) from exc
        return self._result(request, json.loads(reply))

    def _result(self, request: dict[str, Any], answer: dict[str, Any]) -> Any:
        if "error" in answer:
            kind, message = answer["error"], answer.get("message", "")
            if kind == "not_found":
                raise SessionNotFoundError(
                    f"session {request.get('session')!r} is not in the embedded ledger at "
                    f"{self.url}: it was never created there"
                )
            if kind == "unavailable":
                raise LedgerUnavailableError(
                    f"budgetkit: the embedded ledger at {self.url} is unavailable: {message}",
                    url=self.url,
                )
            if kind == "exists":
                raise BudgetConfigError(
                    f"{message} in the embedded ledger at {self.url}; enter it with "
                    "SessionBudget.join()"
                )
            raise LedgerError(f"budgetkit: the embedded ledger at {self.url} failed: {message}")
        return answer["ok"]

    def close(self) -> None:
        """Close this process's connection (a later request opens a new one)."""
        with self._lock:
            self._drop()

    # ------------------------------------------------------------------ sessions
    def create(
        self,
        session_id: str,
        limits: Limits,
        *,
        name: str | None = None,
        reserve_for_wrapup: float | None = None,
        parent_session_id: str | None = None,
        step_room: int | None = None,
        usd_room: Decimal | None = None,
        extra: Mapping[str, Any] | None = None,
        account: AccountTerms | None = None,
    ) -> EmbeddedLedgerSession:
        """Store a new session with its limits; its clock starts now. ``account``: charged
        with the session by the server, on the server's clock.

        Raises:
            BudgetConfigError: a session with this id is already in the ledger.
            LedgerUnavailableError: the server is unreachable or timed out.
        """
        check_session_id(session_id)
        if not isinstance(limits, Limits):
            raise BudgetTypeError(f"limits must be a budgetkit Limits, got {limits!r}")
        config = {
            "limits": limits.as_dict(),
            "name": name,
            "reserve_for_wrapup": reserve_for_wrapup,
            "parent_session_id": parent_session_id,
            "extra": dict(extra or {}),
        }
        if account is not None:
            config["account"] = account.spec()
        self.call(
            {
                "op": "create",
                "session": session_id,
                "config": config,
                "step_room": step_room,
                "usd_room": None if usd_room is None else str(usd_room),
            }
        )
        return EmbeddedLedgerSession(self, session_id, config, owner=True)

    def account_usage(self, account: AccountTerms, buckets: Buckets) -> tuple[Tally, int]:
        """The usage of ``account`` in the window ``buckets``, and its open reservations."""
        got = self.call(
            {"op": "account_usage", "account": account.spec(), "counted": list(buckets.counted)}
        )
        return Tally(*got[0]), int(got[1])

    def account_usages(self) -> list[AccountUsage]:
        """Every account the server has counted, in its current window."""
        out = []
        for spec, tally, reserved in self.call({"op": "accounts"}):
            account = AccountTerms.from_spec(spec)
            out.append(account.usage_of(account.buckets(), Tally(*tally), int(reserved)))
        return out

    def join(self, session_id: str) -> EmbeddedLedgerSession:
        """A handle on a session created by another process (or this one).

        Raises:
            SessionNotFoundError: the session is not in the ledger.
            LedgerUnavailableError: the server is unreachable or timed out.
        """
        check_session_id(session_id)
        config = self.call({"op": "join", "session": session_id})
        return EmbeddedLedgerSession(self, session_id, config, owner=False)


class EmbeddedLedgerSession:
    """One process's handle on a session of an embedded ledger (the ledger protocol).

    Every operation is one request, applied by the server under the in-process ledger's
    lock. Thread-safe; after ``os.fork`` the child's copy is a handle of its own.
    """

    def __init__(
        self, ledger: EmbeddedLedger, session_id: str, config: Mapping[str, Any], *, owner: bool
    ) -> None:
        self.ledger = ledger
        self.session_id = session_id
        self.url = ledger.url
        self.limits = _limits(config.get("limits") or {})
        self.name: str | None = config.get("name")
        self.reserve_for_wrapup: float | None = config.get("reserve_for_wrapup")
        self.parent_session_id: str | None = config.get("parent_session_id")
        #: What the creator stored for joiners (``create(extra=...)``).
        self.extra: dict[str, Any] = dict(config.get("extra") or {})
        account = config.get("account")
        #: The account every call is also charged to (``None``: none).
        self.account_terms = None if account is None else AccountTerms.from_spec(account)
        #: The last admission saw a run of consecutive errors (a success should reset it).
        self.errors_seen = False
        self._token = os.urandom(8).hex()
        self._seq = itertools.count(1)
        #: The process that created the session stops its clock on close.
        self._owner_pid = os.getpid() if owner else None
        self._last = Counters()

    def __repr__(self) -> str:
        return f"<EmbeddedLedgerSession {self.session_id} at {self.url}>"

    @property
    def holder(self) -> str:
        """This handle's id as a handoff claimant (a forked child's copy has its own)."""
        return f"{os.getpid()}-{self._token}"

    def new_op_id(self) -> str:
        """A fresh operation id; an operation resent with the same id is applied once."""
        return f"{self.holder}-{next(self._seq)}"

    def _call(self, op: str, op_id: str | None = None, **fields_: Any) -> Any:
        request = {"op": op, "session": self.session_id, **fields_}
        if op_id is not None:
            request["op_id"] = op_id
        return self.ledger.call(request)

    def admit(
        self,
        kind: str | None,
        reserve: int | None = None,
        *,
        name: str = "",
        wrapup: bool = False,
        op_id: str | None = None,
        tool_cap: int | None = None,
        digest: str | None = None,
    ) -> str | None:
        """Check every limit and count the call, atomically; ``None`` when admitted."""
        reason, errors = self._call(
            "admit",
            op_id or self.new_op_id(),
            kind=kind,
            reserve=None if reserve is None else _check_units(reserve),
            name=name,
            wrapup=wrapup,
            tool_cap=tool_cap,
            digest=digest,
        )
        if reason is None:
            self.errors_seen = bool(errors)
        return None if reason is None else str(reason)

    def record(
        self,
        counts: Counts | None,
        cost: int | None,
        *,
        release: int = 0,
        op_id: str | None = None,
    ) -> str | None:
        """Add one call and give back ``release`` of this handle's reservation; the tripped
        reason, if any."""
        tripped = self._call(
            "record",
            op_id or self.new_op_id(),
            counts=None if counts is None else [int(n) for n in counts],
            cost=None if cost is None else _check_units(cost),
            release=_check_units(release),
        )
        return None if tripped is None else str(tripped)

    def release(self, amount: int, *, op_id: str | None = None) -> None:
        """Give back ``amount`` units of this handle's reservations (never more than it holds)."""
        if amount:
            self._call("release", op_id or self.new_op_id(), amount=_check_units(amount))

    def fail(self, *, op_id: str | None = None) -> str | None:
        """Count a failed call; the tripped reason, if any."""
        tripped = self._call("fail", op_id or self.new_op_id())
        return None if tripped is None else str(tripped)

    def succeed(self) -> None:
        """Reset the run of consecutive errors."""
        self._call("succeed")

    def trip(self, reason: str) -> None:
        """Mark a limit as crossed (first wins)."""
        self._call("trip", reason=reason)

    def latch(self, reason: str, name: str = "") -> str:
        """Latch the session as exhausted (first wins); the latched reason."""
        return str(self._call("latch", reason=reason, name=name))

    def extend(
        self, limits: Limits, *, step_room: int | None = None, usd_room: Decimal | None = None
    ) -> str | None:
        """New (larger) limits and the latch lifted, for every process; the measured limit
        still crossed, if any."""
        tripped = self._call(
            "extend",
            self.new_op_id(),
            limits=limits.as_dict(),
            step_room=step_room,
            usd_room=None if usd_room is None else str(usd_room),
        )
        self.limits = limits
        return None if tripped is None else str(tripped)

    def claim_handoff_writer(self) -> bool:
        """Whether this handle writes the handoff: exactly one handle of the session wins."""
        return bool(self._call("claim", holder=self.holder))

    def snapshot(self) -> LedgerSnapshot:
        """The counters and state now, read under the server's lock."""
        got = self._call("snapshot")
        counters = Counters(**{name: got["counters"][name] for name in _COUNTER_FIELDS})
        self._last = counters
        return snapshot_of(counters, elapsed=float(got["elapsed"]), writer=got["writer"])

    def counters(self) -> Counters:
        """The counters of the last snapshot this handle read (no round trip)."""
        return self._last

    def close(self) -> None:
        """The creating process stops the session's clock; other handles have nothing to do."""
        if self._owner_pid == os.getpid():
            with contextlib.suppress(LedgerError):
                self._call("close")


def _check_units(units: int) -> int:
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise BudgetTypeError(f"a ledger amount must be a non-negative int of units, got {units!r}")
    return units


# ---------------------------------------------------------------------------------- fork
_CLIENTS: weakref.WeakSet[EmbeddedLedger] = weakref.WeakSet()
_SERVERS: weakref.WeakSet[EmbeddedLedgerServer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client.after_fork_in_child()
    for server in list(_SERVERS):
        server.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
