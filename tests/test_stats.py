"""Calibration statistics and ``budgetkit stats``."""

from __future__ import annotations

import io
import json
import random
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetkit import BudgetConfigError, BudgetTypeError, SessionBudget, budget
from budgetkit._session_log import append_record, log_session
from budgetkit._stats import DIMENSIONS, compute_stats, percentile, recommend
from budgetkit.cli import _stats as cli_stats
from budgetkit.cli import main

N = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(v: int, *, stop_reason: str = "completed", **limits: Any) -> dict[str, Any]:
    """A session whose every dimension is a multiple of ``v``."""
    return {
        "session_id": f"s{v}",
        "stop_reason": stop_reason,
        "limits": limits,
        "usage": {
            "steps": v,
            "llm_calls": 2 * v,
            "total_tokens": 100 * v,
            "cost_usd": str(Decimal(v) / 1000),
            "elapsed_seconds": v / 10,
            "unpriced_calls": 1 if v % 100 == 0 else 0,
        },
    }


def thousand_records() -> list[dict[str, Any]]:
    """1..1000 in random order: p50 = 500, p95 = 950, max = 1000 (nearest rank)."""
    values = list(range(1, N + 1))
    random.Random(5).shuffle(values)
    reasons = ["completed"] * 900 + ["max_steps"] * 60 + ["max_usd"] * 30 + ["error"] * 10
    out = []
    for i, (v, reason) in enumerate(zip(values, reasons, strict=True)):
        limits: dict[str, Any] = {"max_steps": 1000 if i % 2 else 1200, "max_usd": None}
        if i % 3 == 0:
            limits["max_usd"] = "2.50"
        out.append(make_record(v, stop_reason=reason, **limits))
    return out


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "sessions.jsonl"
    for rec in thousand_records():
        append_record(path, rec)
    return path


# ---------------------------------------------------------------------------- percentile
def test_percentile_nearest_rank_exact_values() -> None:
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 5) == 15
    assert percentile(values, 30) == 20
    assert percentile(values, 40) == 20
    assert percentile(values, 50) == 35
    assert percentile(values, 95) == 50
    assert percentile(values, 100) == 50
    assert percentile([7], 50) == 7
    assert percentile([1, 2], 50) == 1
    one_to_1000 = list(range(1, 1001))
    assert (percentile(one_to_1000, 50), percentile(one_to_1000, 95)) == (500, 950)
    assert percentile(list(range(1, 21)), 95) == 19


def test_percentile_returns_observed_decimals() -> None:
    values = [Decimal("0.01"), Decimal("0.02"), Decimal("0.03")]
    assert percentile(values, 50) == Decimal("0.02")


@pytest.mark.parametrize("q", [0, -1, 101, float("nan"), True])
def test_percentile_bad_q(q: float) -> None:
    with pytest.raises(BudgetConfigError):
        percentile([1, 2, 3], q)


def test_percentile_of_nothing() -> None:
    with pytest.raises(BudgetConfigError):
        percentile([], 50)


# ---------------------------------------------------------------------------- recommend
def test_recommend_counts_round_up() -> None:
    assert recommend("steps", 10) == 12  # not 13: decimal arithmetic, no float error
    assert recommend("steps", 11) == 14  # 13.2 -> 14
    assert recommend("llm_calls", 1) == 2  # 1.2 -> 2
    assert recommend("total_tokens", 95_000) == 114_000
    assert recommend("elapsed_seconds", 10.0) == 12
    assert recommend("elapsed_seconds", 0.1) == 1


def test_recommend_usd_rounds_up_to_the_cent() -> None:
    assert recommend("cost_usd", Decimal("0.10")) == Decimal("0.12")
    assert recommend("cost_usd", Decimal("0.101")) == Decimal("0.13")  # 0.1212 -> 0.13
    assert recommend("cost_usd", Decimal("0.95")) == Decimal("1.14")
    assert recommend("cost_usd", Decimal("0.0001")) == Decimal("0.01")
    assert str(recommend("cost_usd", Decimal(2))) == "2.40"


def test_recommend_none_for_zero_and_unknown_dimension() -> None:
    assert recommend("steps", 0) is None
    assert recommend("cost_usd", Decimal(0)) is None
    with pytest.raises(BudgetConfigError):
        recommend("bananas", 3)


# ---------------------------------------------------------------------------- compute_stats
def test_compute_stats_on_1000_sessions() -> None:
    stats = compute_stats(thousand_records())
    assert stats.sessions == N
    assert [d.name for d in stats.dimensions] == [name for name, _ in DIMENSIONS]
    expected = {
        "steps": (500, 950, 1000, 1140),
        "llm_calls": (1000, 1900, 2000, 2280),
        "total_tokens": (50_000, 95_000, 100_000, 114_000),
        "cost_usd": (Decimal("0.5"), Decimal("0.95"), Decimal(1), Decimal("1.14")),
        "elapsed_seconds": (50.0, 95.0, 100.0, 114),
    }
    for name, (p50, p95, top, rec) in expected.items():
        dim = stats.dimension(name)
        assert dim.count == N
        assert (dim.p50, dim.p95, dim.max, dim.recommended) == (p50, p95, top, rec), name
    assert isinstance(stats.dimension("cost_usd").p95, Decimal)
    assert stats.stop_reasons == {"completed": 900, "max_steps": 60, "max_usd": 30, "error": 10}
    assert list(stats.stop_reasons) == ["completed", "max_steps", "max_usd", "error"]
    assert stats.dimension("steps").stopped == 60
    assert stats.dimension("cost_usd").stopped == 30
    assert stats.dimension("llm_calls").stopped == 0
    assert stats.dimension("steps").limits == (1000, 1200)
    assert stats.dimension("cost_usd").limits == (Decimal("2.50"),)
    assert stats.dimension("elapsed_seconds").limits == ()
    assert stats.unpriced_sessions == 10
    with pytest.raises(KeyError):
        stats.dimension("nope")


def test_compute_stats_to_dict() -> None:
    doc = compute_stats(thousand_records()).to_dict()
    json.dumps(doc)
    assert doc["percentile_method"] == "nearest-rank"
    assert doc["dimensions"]["cost_usd"]["p95"] == "0.95"
    assert doc["dimensions"]["cost_usd"]["recommended"] == "1.14"
    assert doc["dimensions"]["cost_usd"]["limits"] == ["2.50"]
    assert doc["dimensions"]["steps"]["recommended"] == 1140
    assert doc["dimensions"]["elapsed_seconds"]["p95"] == 95.0


def test_compute_stats_of_nothing() -> None:
    stats = compute_stats([])
    assert stats.sessions == 0
    assert all(d.count == 0 and d.p95 is None and d.recommended is None for d in stats.dimensions)
    assert stats.stop_reasons == {}


def test_compute_stats_rejects_bad_records() -> None:
    with pytest.raises(BudgetTypeError, match="record 1"):
        compute_stats([make_record(1), 5])  # type: ignore[list-item]
    bad = make_record(2)
    del bad["usage"]["steps"]
    with pytest.raises(BudgetConfigError, match=r"record 1: usage\.steps is missing"):
        compute_stats([make_record(1), bad])


def test_compute_stats_ignores_invalid_limits() -> None:
    rec = make_record(3, max_steps="ten", max_usd="x", max_seconds=-1, max_tokens=True)
    stats = compute_stats([rec])
    assert all(d.limits == () for d in stats.dimensions)


# ---------------------------------------------------------------------------- CLI
def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["stats", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plain_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(log))
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"1,000 sessions in {log} (nearest-rank percentiles)"
    header = next(line for line in lines if line.startswith("dimension"))
    assert header.split() == ["dimension", "p50", "p95", "max", "limit", "stopped", "recommended"]
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["steps"] == ["steps", "500", "950", "1,000", "1,000,", "1,200", "60", "1,140"]
    assert rows["cost_usd"] == ["cost_usd", "$0.50", "$0.95", "$1.00", "$2.50", "30", "$1.14"]
    assert rows["elapsed_seconds"][1:4] == ["50.0s", "95.0s", "100.0s"]
    assert rows["elapsed_seconds"][-1] == "114s"
    assert rows["completed"] == ["completed", "900"]
    assert any("60 sessions were stopped by max_steps" in line for line in lines)
    assert any("10 sessions made LLM calls of unknown cost" in line for line in lines)


def test_cli_rich_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_stats, "fancy", lambda stream=None: True)
    out = io.StringIO()
    cli_stats._print_report(compute_stats(thousand_records()), Path("s.jsonl"), out)
    text = out.getvalue()
    assert "stop reasons" in text
    assert "1,140" in text
    assert "recommended" in text


def test_cli_json(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, str(log), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["sessions"] == N
    assert doc["source"] == str(log)
    assert doc["corrupt_records"] == 0
    steps = doc["dimensions"]["steps"]
    assert (steps["p50"], steps["p95"], steps["max"], steps["recommended"]) == (
        500,
        950,
        1000,
        1140,
    )
    assert doc["stop_reasons"]["max_usd"] == 30


def test_cli_plot_writes_a_png(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    out_png = tmp_path / "dist.png"
    code, _, err = run_cli(capsys, str(log), "--plot", str(out_png), "--json")
    assert code == 0
    assert f"wrote {out_png}" in err
    data = out_png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(out_png) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
    assert width >= 400
    assert height >= 2 * width // 3  # one panel per dimension, stacked


def test_cli_plot_unwritable(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, str(log), "--plot", str(tmp_path / "no" / "dir" / "x.png"))
    assert code == 1
    assert "cannot write" in err


def test_cli_plot_without_matplotlib(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_cli(capsys, str(log), "--plot", str(tmp_path / "x.png"))
    assert code == 2
    assert out == ""
    assert "budgetkit's [stats] extra" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot read" in err
    assert "nope.jsonl" in err


def test_cli_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, str(tmp_path))
    assert code == 1
    assert err.count("\n") == 1


def test_cli_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli(capsys, str(empty))
    assert code == 1
    assert "no valid session records" in err


def test_cli_corrupt_lines_reported_and_skipped(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with log.open("ab") as handle:
        handle.write(b"{broken\n")
    append_record(log, make_record(1))
    code, out, err = run_cli(capsys, str(log), "--json")
    assert code == 0
    assert err.splitlines() == [
        f"budgetkit stats: {log}:1001: corrupt record skipped: not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    doc = json.loads(out)
    assert doc["sessions"] == N + 1
    assert doc["corrupt_records"] == 1


def test_cli_caps_corrupt_line_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("x\n" * 25)
    append_record(path, make_record(4))
    code, _, err = run_cli(capsys, str(path))
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == cli_stats.MAX_REPORTED + 1
    assert lines[-1] == "budgetkit stats: ... 5 more corrupt records skipped (25 in all)"


def test_cli_all_lines_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\x00\x01\x02\n")
    code, _, err = run_cli(capsys, str(path))
    assert code == 1
    assert f"{path}:1:" in err
    assert "no valid session records" in err


def test_cli_log_from_environment(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDGETKIT_SESSION_LOG", str(log))
    code, out, _ = run_cli(capsys, "--json")
    assert code == 0
    assert json.loads(out)["sessions"] == N
    monkeypatch.delenv("BUDGETKIT_SESSION_LOG")
    code, _, err = run_cli(capsys)
    assert code == 2
    assert "BUDGETKIT_SESSION_LOG" in err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--plot" in out
    assert "nearest-rank" in out


def test_end_to_end_with_real_sessions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    @budget.step
    def work() -> None:
        return None

    path = tmp_path / "s.jsonl"
    for steps in (1, 2, 3):
        with SessionBudget(max_steps=5, handoff_dir=None) as session:
            for _ in range(steps):
                work()
        assert log_session(session, path) == path
    code, out, _ = run_cli(capsys, str(path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["sessions"] == 3
    assert doc["dimensions"]["steps"]["p50"] == 2
    assert doc["dimensions"]["steps"]["max"] == 3
    assert doc["dimensions"]["steps"]["recommended"] == 4  # ceil(3 * 1.2)
    assert doc["dimensions"]["steps"]["limits"] == [5]
    assert doc["stop_reasons"] == {"completed": 3}
