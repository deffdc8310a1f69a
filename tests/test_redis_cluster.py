"""The Redis ledger on a real 3-master Redis Cluster started locally: every script of a
session touches one slot (its keys share the ``{session_id}`` hash tag; a session of an
account, the account's), sessions spread over the masters, and ``redis+cluster://`` URLs
reach it."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis_fixtures import INSTALL_HINT, counts, free_port, units

from budgetkit import Account, SessionBudget, Usage, budget
from budgetkit._limits import Limits
from budgetkit.ledgers._redis_accounts import RedisAccount
from budgetkit.ledgers.redis import LIBRARY_NAME, RedisLedger

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three redis-server masters (cluster mode, no persistence) joined by redis-cli."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    ports = cluster_ports(3)
    procs: list[subprocess.Popen[bytes]] = []
    root = tmp_path_factory.mktemp("cluster")
    try:
        for port in ports:
            directory = root / str(port)
            directory.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(directory),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping())
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in ports:
            _wait(lambda p=port: "cluster_state:ok" in _cluster_info(p))
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too (and valid)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randint(20_000, 50_000)
        if port in ports or port + 10_000 in ports:
            continue
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


def _cluster_info(port: int) -> str:
    with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
        return str(client.execute_command("CLUSTER", "INFO"))


def _wait(ready: Any) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if ready():
                return
        except redis.exceptions.RedisError:
            pass
        assert time.monotonic() < deadline, "the cluster did not come up"
        time.sleep(0.05)


@budget.step
def tool() -> None:
    pass


def test_a_cluster_url_reaches_every_master(cluster: list[int]) -> None:
    """Sessions created through one node's redis+cluster:// URL land on all three masters
    (one slot each), and each keeps exact counts."""
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[0]}", key_prefix="c:")
    assert isinstance(led.client, RedisCluster)
    handles = [led.create(f"s-{uuid.uuid4().hex}", Limits.build(max_steps=3)) for _ in range(12)]
    for handle in handles:
        for _ in range(3):
            assert handle.admit("step") is None
        assert handle.admit("step") == "max_steps"
        assert handle.admit("llm", units("0.01")) == "max_steps"
    owners = set()
    for handle in handles:
        keys = led.keys(handle.session_id)
        assert len({led.client.keyslot(k) for k in keys}) == 1  # one slot per session
        owners.add(led.client.get_node_from_key(keys[0]).port)
    assert owners == set(cluster)


def test_the_function_library_is_loaded_on_every_master(cluster: list[int]) -> None:
    """Operations are FCALLs; after FUNCTION FLUSH on every master the next operation loads
    the library on all of them again, and sessions on every master keep working."""
    masters = [redis.Redis(port=port, decode_responses=True) for port in cluster]
    for master in masters:
        master.function_flush()
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[2]}", key_prefix="f:")
    ids: dict[int, list[str]] = {port: [] for port in cluster}
    while min(len(found) for found in ids.values()) < 3:  # three sessions on every master
        sid = f"s-{uuid.uuid4().hex}"
        ids[led.client.get_node_from_key(led.keys(sid)[0]).port].append(sid)
    chosen = [sid for found in ids.values() for sid in found[:3]]
    handles = [led.create(sid, Limits.build(max_steps=2)) for sid in chosen]
    assert all(LIBRARY_NAME in str(master.function_list()) for master in masters)
    owners = {led.client.get_node_from_key(led.keys(h.session_id)[0]).port for h in handles}
    assert owners == set(cluster)
    for handle in handles:
        assert handle.admit("step") is None
        assert handle.admit("step") is None
        assert handle.admit("step") == "max_steps"
    assert led.functions
    assert (
        sum(int(m.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)) for m in masters)
        >= 36
    )
    for master in masters:
        master.close()


def test_threads_race_on_one_session_in_the_cluster(cluster: list[int]) -> None:
    """8 threads, each its own handle, race on max_usd through the cluster: exact spend."""
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[1]}", key_prefix="c:")
    sid = f"s-{uuid.uuid4().hex}"
    led.create(sid, Limits.build(max_usd=Decimal("0.50")))
    calls = []

    def worker() -> None:
        handle = led.join(sid)
        n = 0
        while handle.admit("llm", units("0.01")) is None:
            handle.record(counts(Usage(input_tokens=1)), units("0.01"), release=units("0.01"))
            n += 1
        calls.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    snap = led.join(sid).snapshot()
    assert sum(calls) == snap.llm_calls == 50
    assert (snap.cost_usd, snap.reserved_usd) == (Decimal("0.5"), 0)


def test_threads_on_leases_in_the_cluster_admit_exactly_max_steps(cluster: list[int]) -> None:
    """Allotment mode through a ``?allotment=auto`` cluster URL: 6 threads, each its own
    holder, admit exactly max_steps from leases; the lease keys share the session's slot."""
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[0]}?allotment=auto", key_prefix="c:")
    assert led.allotment is not None
    sid = f"s-{uuid.uuid4().hex}"
    led.create(sid, Limits.build(max_steps=2000))
    counted = []

    def worker() -> None:
        handle = led.join(sid)
        n = 0
        while handle.admit("step") is None:
            n += 1
        handle.close()
        counted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counted) == 2000
    keys = list(led.client.scan_iter(match=f"c:{{{sid}}}*"))  # every key of the session
    assert len({led.client.keyslot(k) for k in keys}) == 1
    assert RedisLedger(led.client, key_prefix="c:").join(sid).snapshot().steps == 2000


def test_a_session_budget_on_the_cluster(cluster: list[int]) -> None:
    """SessionBudget(ledger=RedisLedger('redis+cluster://...')) counts and stops as usual."""
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[2]}")
    with SessionBudget(max_steps=2, ledger=led, handoff_dir=None, raise_on_exhausted=False) as s:
        tool()
        tool()
        tool()
    assert s.result is not None
    assert (s.result.stop_reason, s.result.usage.steps) == ("max_steps", 2)


def test_an_unreachable_cluster_fails_closed() -> None:
    """No node answers: a clear LedgerUnavailableError naming the URL."""
    from budgetkit.exceptions import LedgerUnavailableError

    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(LedgerUnavailableError, match=r"127\.0\.0\.1"):
        RedisLedger(url, socket_timeout=0.5, retries=0)


def test_an_account_and_its_sessions_share_one_slot(cluster: list[int]) -> None:
    """Sessions of one account are hash-tagged by the account, so each operation checks and
    charges a session and the account's window on one slot; a session joined by id (through
    its pointer key) charges it too; 4 threads on 4 handles admit exactly the account's 30
    steps."""
    led = RedisLedger(f"redis+cluster://127.0.0.1:{cluster[0]}", key_prefix="ca:")
    account = Account(f"acct-{uuid.uuid4().hex}", max_steps=30, ledger=led)
    created = [
        led.create(f"s-{uuid.uuid4().hex}", Limits(), account=account.terms) for _ in range(3)
    ]
    handles = [*created, led.join(created[0].session_id)]
    keys = RedisAccount(led.key_prefix, account.terms)
    slots = {
        led.client.keyslot(k)
        for h in created
        for k in [*keys.session_keys(h.session_id), *keys.keys(account.terms.buckets())]
    }
    assert len(slots) == 1
    admitted: list[int] = []

    def worker(handle: Any) -> None:
        n = 0
        while handle.admit("step") is None:
            n += 1
        admitted.append(n)

    threads = [threading.Thread(target=worker, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(admitted) == 30
    assert account.usage().steps == 30
    assert {h.snapshot().reason for h in handles} == {"account_max_steps"}
