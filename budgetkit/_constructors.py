"""The ways to make a :class:`~budgetkit.SessionBudget` other than its constructor.

``resume`` (a handoff, with a fresh budget), ``join`` (a session that lives in a shared
ledger, from another process) and ``from_config`` (a configured tier), with ``inject``, the
other half of ``join``. A base class of ``SessionBudget``: its methods are documented there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from ._settings import KEYWORDS
from .exceptions import BudgetTypeError

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, MutableMapping
    from pathlib import Path

    from ._boundary import Boundary
    from ._claims import Lease
    from ._handoff import Handoff
    from ._lineage import Place
    from .ledgers import Ledger


class Constructors:
    """``SessionBudget``'s alternative constructors (a base class, nothing on its own)."""

    session_id: str
    parent_session_id: str | None
    resumed_from: Handoff | None
    handoff_dir: Path | None
    place: Place
    boundary: Boundary
    ledger: Ledger | None
    #: The claim of a session resumed from a handoff file: renewed while it runs.
    lease: Lease | None = None

    if TYPE_CHECKING:

        def __init__(self, **kwargs: Any) -> None: ...

    # ------------------------------------------------------------------ many processes
    @classmethod
    def join(
        cls,
        session_id_or_headers: str | Mapping[str, str] | None = None,
        /,
        *,
        ledger: Ledger | None = None,
        token: str | None = None,
        trust_id: bool = False,
        **overrides: Any,
    ) -> Self:
        """Enter, from another process or machine, a session that lives in a ledger.

        Returns a new, not yet entered ``SessionBudget`` for session ``session_id_or_headers``:
        a mapping of headers whose W3C ``baggage`` carries ``budgetkit.session.id`` and
        ``budgetkit.join_token`` (see :meth:`inject`), ``None`` for the current
        OpenTelemetry baggage, or an id with ``token=``. The join token proves the caller was
        given the session by a process in it, not that it guessed the id: a missing or wrong
        token raises :class:`~budgetkit.JoinRefusedError`. ``trust_id=True`` is the explicit
        opt-in to join by the id alone (a token given is still checked).

        Its limits, name and chain come from the ledger; keywords may set only what is
        local to this process (``handoff_dir``, ``raise_on_exhausted``, ``prices``,
        ``on_unknown_cost``, ``thresholds``, ``on_threshold``, ``on_phase_change``,
        ``phases``, ``session_log``, ``on_ledger_error``).

        Args:
            ledger: the ledger holding the session; default ``$BUDGETKIT_LEDGER_URL``'s.
            token: the session's join token, when the id is given on its own.
            trust_id: join without a token.

        Raises:
            JoinRefusedError: no join token (without ``trust_id=True``), or not this
                session's.
            SessionNotFoundError: the session is unknown to the ledger, or expired.
            LedgerUnavailableError: the ledger is unreachable or timed out.
            BudgetConfigError: no ledger, no session id in the headers, or a limit keyword.

        .. versionadded:: 0.1.0
        """
        from ._joining import open_joined

        found, handle, kwargs, place = open_joined(
            session_id_or_headers, ledger, overrides, token=token, trust_id=trust_id
        )
        session = cls(**kwargs, ledger=found)
        session.parent_session_id = handle.parent_session_id
        if place is not None:
            session.place = place
        session.boundary.handle = handle
        return session

    def inject(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        """Write this session's id and join token into ``headers`` as the W3C ``baggage``
        entries ``budgetkit.session.id`` and ``budgetkit.join_token`` (other baggage entries
        are kept); return ``headers``.

        A worker that receives them enters the session with :meth:`join`. The token is made
        from a secret the ledger created with the session, so a session with a shared ledger
        must be entered first. Baggage travels with the headers to every service they are
        sent to: whoever holds them can join the session.

        Raises:
            BudgetError: the session has a shared ledger and is not entered yet.

        .. versionadded:: 0.1.0
        """
        from ._joining import inject, token_of

        handle = self.boundary.handle
        if handle is None and self.ledger is not None:
            from .exceptions import BudgetError

            raise BudgetError(
                f"session {self.session_id!r} is not entered: enter it before inject(), so "
                "its ledger has made the secret its join token comes from"
            )
        return inject(self.session_id, headers, token_of(handle))

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(
        cls,
        handoff: Handoff | str | os.PathLike[str],
        /,
        *,
        chain: str | None = None,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        **overrides: Any,
    ) -> Self:
        """A new session that continues ``handoff`` with a fresh budget.

        The old limits and chain caps apply unless overridden by keyword (the same keywords
        as the constructor). ``parent_session_id`` is set, ``resumed_from`` holds the handoff,
        and the session joins the handoff's chain (``root_session_id``, ``attempt``,
        ``chain_usage``). When a path is given, the new session writes its handoff next to it
        unless ``handoff_dir`` is overridden, and the handoff is *claimed* atomically (a
        ``<name>.claim`` file beside it) once every check has passed.

        The claim is a lease: renewed while the session runs, closed when it ends. A worker
        that dies (its lease expires) or a session that ends with an exception (recorded in
        ``<name>.failed``) makes the handoff claimable again, up to ``max_attempts`` claims.

        Args:
            chain: the root session id of the chain you mean to continue; a handoff of
                another chain raises :class:`~budgetkit.ChainError`.
            lease_seconds: how long the claim outlives its last renewal (default 60); it is
                renewed every third of that while the session runs.
            max_attempts: claims of this handoff allowed, this one included (default 3).

        Raises:
            HandoffError: the handoff file is missing, corrupt or not a handoff.
            ChainError: the handoff is of another chain than ``chain``, its parent's handoff
                beside it belongs to another chain, or the new session id is already in it.
            ChainCapError: the chain is at or over a chain cap (the caps given included).
            HandoffClaimedError: the handoff is claimed by a live lease, was resumed by a
                session that ended, or failed ``max_attempts`` times.
            BudgetConfigError: the handoff's directory is world-writable, belongs to another
                user and has no sticky bit.
            BudgetTypeError: an unknown keyword.
        """
        unknown = sorted(set(overrides) - KEYWORDS)
        if unknown:
            raise BudgetTypeError(
                "SessionBudget.resume() got unknown keyword argument(s): "
                + ", ".join(f"{key}={overrides[key]!r}" for key in unknown)
            )
        from ._chainfiles import prepare_resume
        from ._claims import check_lease_settings, claim

        lease, attempts = check_lease_settings(lease_seconds, max_attempts)
        plan = prepare_resume(handoff, chain=chain)
        session = cls(**{**plan.kwargs, **overrides})
        session.place = session.place.continued(plan.lineage, session.session_id)
        plan.check_own_file(session.handoff_dir, session.session_id)
        if plan.path is not None:
            session.lease = claim(
                plan.path,
                plan.handoff.session_id,
                session.session_id,
                lease_seconds=lease,
                max_attempts=attempts,
            )
        session.parent_session_id = plan.handoff.session_id
        session.resumed_from = plan.handoff
        return session

    @classmethod
    def from_config(
        cls, tier: str, *, path: str | os.PathLike[str] | None = None, **overrides: Any
    ) -> Self:
        """A session with the limits of a configured tier.

        Tiers come from ``[tool.budgetkit.tiers.<name>]`` in ``pyproject.toml`` or
        ``[tiers.<name>]`` in ``budgetkit.toml``, over the built-in presets ``qa``,
        ``research``, ``analysis`` and ``long``; ``BUDGETKIT_MAX_*`` variables override;
        keywords override everything.
        """
        from ._tiers import load_tier

        return cls(**{**load_tier(tier, path=path), **overrides})
