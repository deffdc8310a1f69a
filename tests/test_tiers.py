"""Budget tiers: presets, budgetkit.toml / pyproject.toml, environment overrides, bad input."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from budgetkit import BudgetConfigError, BudgetTypeError, SessionBudget
from budgetkit._tiers import PRESETS, known_tiers, limits_from_env, load_tier

NO_ENV: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, with no BUDGETKIT_MAX_* variables."""
    monkeypatch.chdir(tmp_path)
    for var in (
        "BUDGETKIT_MAX_STEPS",
        "BUDGETKIT_MAX_LLM_CALLS",
        "BUDGETKIT_MAX_TOKENS",
        "BUDGETKIT_MAX_INPUT_TOKENS",
        "BUDGETKIT_MAX_OUTPUT_TOKENS",
        "BUDGETKIT_MAX_USD",
        "BUDGETKIT_MAX_SECONDS",
        "BUDGETKIT_MAX_CONSECUTIVE_ERRORS",
    ):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------- presets
@pytest.mark.parametrize(
    ("tier", "steps", "usd"),
    [
        ("qa", 10, "0.10"),
        ("research", 25, "0.50"),
        ("analysis", 50, "2.00"),
        ("long", 100, "5.00"),
    ],
)
def test_presets_take_the_top_of_each_range(tier: str, steps: int, usd: str) -> None:
    assert load_tier(tier, environ=NO_ENV) == {"max_steps": steps, "max_usd": Decimal(usd)}


def test_preset_builds_a_session() -> None:
    session = SessionBudget(**load_tier("research", environ=NO_ENV), handoff_dir=None)
    assert session.limits.max_steps == 25
    assert session.limits.max_usd == Decimal("0.50")


def test_presets_are_read_only_and_results_are_copies() -> None:
    got = load_tier("qa", environ=NO_ENV)
    got["max_steps"] = 1
    assert load_tier("qa", environ=NO_ENV)["max_steps"] == 10
    with pytest.raises(TypeError):
        PRESETS["qa"]["max_steps"] = 1  # type: ignore[index]


def test_unknown_tier_lists_known_tiers() -> None:
    with pytest.raises(BudgetConfigError) as info:
        load_tier("huge", environ=NO_ENV)
    message = str(info.value)
    assert "'huge'" in message
    assert "analysis, long, qa, research" in message


def test_tier_must_be_a_str() -> None:
    with pytest.raises(BudgetTypeError):
        load_tier(3, environ=NO_ENV)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- files
def test_budgetkit_toml_in_cwd(tmp_path: Path) -> None:
    write(
        tmp_path / "budgetkit.toml",
        """
[tiers.nightly]
max_steps = 200
max_usd = 7.5
max_seconds = 3600
max_llm_calls = 400
max_tokens = 1_000_000
max_input_tokens = 900_000
max_output_tokens = 100_000
max_consecutive_errors = 3
thresholds = [0.5, 0.8, 0.95]
reserve_for_wrapup = 0.1
on_unknown_cost = "error"
""",
    )
    assert load_tier("nightly", environ=NO_ENV) == {
        "max_steps": 200,
        "max_usd": Decimal("7.5"),
        "max_seconds": 3600.0,
        "max_llm_calls": 400,
        "max_tokens": 1_000_000,
        "max_input_tokens": 900_000,
        "max_output_tokens": 100_000,
        "max_consecutive_errors": 3,
        "thresholds": [0.5, 0.8, 0.95],
        "reserve_for_wrapup": 0.1,
        "on_unknown_cost": "error",
    }
    assert "nightly" in known_tiers()
    SessionBudget.from_config("nightly", handoff_dir=None)  # what loads, builds


def test_pyproject_in_cwd(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.budgetkit.tiers.ci]\nmax_steps = 5\nmax_usd = 0.05\n',
    )
    assert load_tier("ci", environ=NO_ENV) == {"max_steps": 5, "max_usd": Decimal("0.05")}


def test_budgetkit_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.budgetkit.tiers.ci]\nmax_steps = 5\n")
    write(tmp_path / "budgetkit.toml", "[tiers.ci]\nmax_steps = 6\n")
    assert load_tier("ci", environ=NO_ENV) == {"max_steps": 6}


def test_pyproject_tier_used_when_budgetkit_toml_lacks_it(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.budgetkit.tiers.ci]\nmax_steps = 5\n")
    write(tmp_path / "budgetkit.toml", "[tiers.other]\nmax_steps = 6\n")
    assert load_tier("ci", environ=NO_ENV) == {"max_steps": 5}


def test_file_tier_replaces_the_preset(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "[tiers.qa]\nmax_steps = 3\n")
    assert load_tier("qa", environ=NO_ENV) == {"max_steps": 3}  # no max_usd from the preset
    assert load_tier("research", environ=NO_ENV)["max_steps"] == 25


def test_explicit_path_file_and_directory(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    write(conf / "budgetkit.toml", "[tiers.x]\nmax_steps = 4\n")
    write(conf / "custom.toml", "[tiers.y]\nmax_steps = 8\n")
    write(conf / "pyproject.toml", "[tool.budgetkit.tiers.z]\nmax_steps = 9\n")
    assert load_tier("x", path=conf, environ=NO_ENV) == {"max_steps": 4}
    assert load_tier("z", path=conf, environ=NO_ENV) == {"max_steps": 9}
    assert load_tier("y", path=conf / "custom.toml", environ=NO_ENV) == {"max_steps": 8}
    assert load_tier("z", path=str(conf / "pyproject.toml"), environ=NO_ENV) == {"max_steps": 9}
    with pytest.raises(BudgetConfigError, match="'x'"):
        load_tier("x")  # the cwd has no file


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(BudgetConfigError, match=r"missing\.toml"):
        load_tier("qa", path=tmp_path / "missing.toml", environ=NO_ENV)


def test_unknown_tier_lists_file_tiers(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "[tiers.nightly]\nmax_steps = 1\n")
    with pytest.raises(BudgetConfigError, match=r"analysis, long, nightly, qa, research"):
        load_tier("weekly", environ=NO_ENV)


def test_other_pyproject_sections_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.ruff]\nline-length = 1\n')
    assert load_tier("qa", environ=NO_ENV)["max_steps"] == 10


# ---------------------------------------------------------------------------- bad files
def test_wrong_type_names_file_line_tier_key_and_value(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "budgetkit.toml",
        '# budgets\n[tiers.qa]\nmax_usd = 0.1\nmax_steps = "ten"\n',
    )
    with pytest.raises(BudgetTypeError) as info:
        load_tier("qa", environ=NO_ENV)
    message = str(info.value)
    assert f"{Path('budgetkit.toml')}:4" in message
    assert "tier 'qa'" in message
    assert "key 'max_steps'" in message
    assert "'ten'" in message
    assert conf.exists()


def test_wrong_type_in_pyproject_names_the_file(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.budgetkit.tiers.ci]\n\nmax_usd = true\n")
    with pytest.raises(BudgetTypeError, match=r"pyproject\.toml:3: tier 'ci', key 'max_usd'.*True"):
        load_tier("ci", environ=NO_ENV)


def test_inline_table_error_still_names_file_tier_and_key(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", 'tiers = { qa = { max_steps = "ten" } }\n')
    with pytest.raises(BudgetTypeError, match=r"budgetkit\.toml: tier 'qa', key 'max_steps'"):
        load_tier("qa", environ=NO_ENV)


@pytest.mark.parametrize(
    ("line", "error", "pattern"),
    [
        ("max_steps = 0", BudgetConfigError, "positive integer, got 0"),
        ("max_steps = 2.5", BudgetTypeError, "got 2.5"),
        ("max_usd = -1", BudgetConfigError, "got -1"),
        ("max_usd = nan", BudgetConfigError, "got nan"),
        ("max_seconds = inf", BudgetConfigError, "got inf"),
        ("thresholds = 0.8", BudgetTypeError, "thresholds"),
        ("thresholds = [0.5, 'x']", BudgetTypeError, "'x'"),
        ("thresholds = [0.5, 1.5]", BudgetConfigError, "1.5"),
        ("reserve_for_wrapup = 1", BudgetConfigError, "reserve_for_wrapup"),
        ("reserve_for_wrapup = '10%'", BudgetTypeError, "'10%'"),
        ("on_unknown_cost = 'ignore'", BudgetConfigError, "'ignore'"),
        ("on_unknown_cost = 1", BudgetTypeError, "on_unknown_cost"),
    ],
)
def test_bad_values(tmp_path: Path, line: str, error: type[Exception], pattern: str) -> None:
    write(tmp_path / "budgetkit.toml", f"[tiers.t]\n{line}\n")
    with pytest.raises(error, match=pattern) as info:
        load_tier("t", environ=NO_ENV)
    assert "budgetkit.toml:2: tier 't', key" in str(info.value)


def test_unknown_key_names_file_tier_key_and_suggests(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "[tiers.t]\nmax_step = 5\n")
    with pytest.raises(BudgetConfigError) as info:
        load_tier("t", environ=NO_ENV)
    message = str(info.value)
    assert "budgetkit.toml:2: tier 't', key 'max_step'" in message
    assert "did you mean 'max_steps'" in message


def test_tier_that_is_not_a_table(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "[tiers]\nt = 5\n")
    with pytest.raises(BudgetConfigError, match=r"budgetkit\.toml: tier 't'.*must be a table"):
        load_tier("t", environ=NO_ENV)


def test_tiers_that_is_not_a_table(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "tiers = 5\n")
    with pytest.raises(BudgetConfigError, match=r"budgetkit\.toml: \[tiers\] must be a table"):
        load_tier("qa", environ=NO_ENV)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "budgetkit.toml", "[tiers.qa]\nmax_steps = 5\nmax_usd = = 1\n")
    with pytest.raises(BudgetConfigError) as info:
        load_tier("qa", environ=NO_ENV)
    message = str(info.value)
    assert "budgetkit.toml, line 3: invalid TOML" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "budgetkit.toml").write_bytes(b"[tiers.qa]\nname = '\xff'\n")
    with pytest.raises(BudgetConfigError, match=r"budgetkit\.toml: not UTF-8"):
        load_tier("qa", environ=NO_ENV)


# ---------------------------------------------------------------------------- environment
def test_environment_overrides_a_tier() -> None:
    env = {"BUDGETKIT_MAX_STEPS": "7", "BUDGETKIT_MAX_SECONDS": "90.5"}
    assert load_tier("qa", environ=env) == {
        "max_steps": 7,
        "max_usd": Decimal("0.10"),
        "max_seconds": 90.5,
    }


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETKIT_MAX_USD", "0.25")
    assert load_tier("qa")["max_usd"] == Decimal("0.25")


def test_limits_from_env_parses_every_variable() -> None:
    env = {
        "BUDGETKIT_MAX_STEPS": " 12 ",
        "BUDGETKIT_MAX_LLM_CALLS": "30",
        "BUDGETKIT_MAX_TOKENS": "1_000_000",
        "BUDGETKIT_MAX_INPUT_TOKENS": "800000",
        "BUDGETKIT_MAX_OUTPUT_TOKENS": "200000",
        "BUDGETKIT_MAX_USD": "0.10",
        "BUDGETKIT_MAX_SECONDS": "60",
        "BUDGETKIT_MAX_CONSECUTIVE_ERRORS": "3",
        "BUDGETKIT_HANDOFF_DIR": "/tmp/x",
        "PATH": "/bin",
    }
    got = limits_from_env(env)
    assert got == {
        "max_steps": 12,
        "max_llm_calls": 30,
        "max_tokens": 1_000_000,
        "max_input_tokens": 800_000,
        "max_output_tokens": 200_000,
        "max_usd": Decimal("0.10"),
        "max_seconds": 60.0,
        "max_consecutive_errors": 3,
    }
    assert str(got["max_usd"]) == "0.10"  # exact, not a float
    SessionBudget(**got, handoff_dir=None)


def test_limits_from_env_skips_unset_and_empty() -> None:
    assert limits_from_env({}) == {}
    assert limits_from_env({"BUDGETKIT_MAX_STEPS": "", "BUDGETKIT_MAX_USD": "  "}) == {}


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BUDGETKIT_MAX_STEPS", "ten"),
        ("BUDGETKIT_MAX_STEPS", "2.5"),
        ("BUDGETKIT_MAX_STEPS", "0"),
        ("BUDGETKIT_MAX_TOKENS", "-5"),
        ("BUDGETKIT_MAX_USD", "$1"),
        ("BUDGETKIT_MAX_USD", "NaN"),
        ("BUDGETKIT_MAX_USD", "0"),
        ("BUDGETKIT_MAX_SECONDS", "1m"),
        ("BUDGETKIT_MAX_SECONDS", "inf"),
        ("BUDGETKIT_MAX_CONSECUTIVE_ERRORS", "many"),
    ],
)
def test_bad_environment_value_names_variable_and_value(var: str, value: str) -> None:
    with pytest.raises(BudgetConfigError) as info:
        limits_from_env({var: value})
    assert f"{var}={value!r}" in str(info.value)
    with pytest.raises(BudgetConfigError, match=var):
        load_tier("qa", environ={var: value})


# ---------------------------------------------------------------------------- issue #19
def test_decimal_string_usd_in_a_file_is_exact(tmp_path: Path) -> None:
    """The documented ``max_usd = "0.25"`` is accepted and kept exact."""
    write(
        tmp_path / "pyproject.toml",
        '[tool.budgetkit.tiers.support]\nmax_steps = 15\nmax_usd = "0.25"\n',
    )
    assert load_tier("support", environ=NO_ENV) == {"max_steps": 15, "max_usd": Decimal("0.25")}
    session = SessionBudget.from_config("support", handoff_dir=None)
    assert session.limits.max_usd == Decimal("0.25")


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        ('"abc"', BudgetConfigError, "decimal"),
        ('"-1"', BudgetConfigError, "positive"),
        ('"NaN"', BudgetConfigError, "positive"),
        ('"1e16"', BudgetConfigError, "1E\\+15"),
        ('""', BudgetConfigError, "decimal"),
    ],
)
def test_bad_decimal_string_usd_names_file_and_line(
    tmp_path: Path, value: str, error: type[Exception], pattern: str
) -> None:
    write(tmp_path / "budgetkit.toml", f"[tiers.t]\nmax_steps = 3\nmax_usd = {value}\n")
    with pytest.raises(error, match=pattern) as info:
        load_tier("t", environ=NO_ENV)
    assert "budgetkit.toml:3: tier 't', key 'max_usd'" in str(info.value)


def test_python_constructor_refuses_a_string_and_names_decimal() -> None:
    """In Python, Decimal is the exact form: the error says so."""
    with pytest.raises(BudgetTypeError, match=r"Decimal\('0.25'\)"):
        SessionBudget(max_usd="0.25", handoff_dir=None)  # type: ignore[arg-type]
    with pytest.raises(BudgetTypeError, match="Decimal"):
        SessionBudget(max_total_usd="1", handoff_dir=None)  # type: ignore[arg-type]


def test_tiers_set_the_chain_caps(tmp_path: Path) -> None:
    write(
        tmp_path / "budgetkit.toml",
        '[tiers.nightly]\nmax_steps = 20\nmax_total_usd = "3.50"\nmax_total_steps = 200\n'
        "max_sessions = 5\n",
    )
    kwargs = load_tier("nightly", environ=NO_ENV)
    assert kwargs == {
        "max_steps": 20,
        "max_total_usd": Decimal("3.50"),
        "max_total_steps": 200,
        "max_sessions": 5,
    }
    session = SessionBudget.from_config("nightly", handoff_dir=None)
    caps = session.chain_caps
    assert (caps.max_total_usd, caps.max_total_steps, caps.max_sessions) == (
        Decimal("3.50"),
        200,
        5,
    )


@pytest.mark.parametrize(
    ("line", "error", "pattern"),
    [
        ("max_sessions = 0", BudgetConfigError, "positive integer"),
        ("max_total_steps = 'x'", BudgetTypeError, "'x'"),
        ("max_total_usd = -2", BudgetConfigError, "got -2"),
        ("thresholds = [1.0]", BudgetConfigError, r"\(0, 1\)"),
        ("thresholds = [0.5, 1]", BudgetConfigError, r"\(0, 1\)"),
        ("reserve_for_wrapup = 0", BudgetConfigError, r"\(0, 1\)"),
        ("reserve_for_wrapup = 0.0", BudgetConfigError, r"\(0, 1\)"),
    ],
)
def test_values_the_session_refuses_are_refused_with_file_and_line(
    tmp_path: Path, line: str, error: type[Exception], pattern: str
) -> None:
    """Every value SessionBudget would refuse is refused by the loader, naming file and line."""
    write(tmp_path / "budgetkit.toml", f"# a comment\n[tiers.t]\nmax_steps = 3\n{line}\n")
    with pytest.raises(error, match=pattern) as info:
        load_tier("t", environ=NO_ENV)
    assert "budgetkit.toml:4: tier 't', key" in str(info.value)


def test_every_loaded_tier_value_builds_a_session(tmp_path: Path) -> None:
    """What the loader accepts, the constructor accepts (edges included)."""
    write(
        tmp_path / "budgetkit.toml",
        "[tiers.edge]\nthresholds = [0.5, 0.999]\nreserve_for_wrapup = 0.01\n"
        'max_usd = "0.000001"\nmax_seconds = 1\non_unknown_cost = "warn"\n',
    )
    session = SessionBudget.from_config("edge", handoff_dir=None)
    assert session.thresholds == (0.5, 0.999)
    assert session.reserve_for_wrapup == 0.01


def test_decimal_string_usd_from_the_environment() -> None:
    assert limits_from_env({"BUDGETKIT_MAX_USD": "0.25"}) == {"max_usd": Decimal("0.25")}
