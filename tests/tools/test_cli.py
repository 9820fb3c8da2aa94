"""The `tally` command line itself: its registry, its refusals and its usage errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli
from tests.repo_paths import REPO_ROOT


def run_python(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter from the repository root, without an inherited PYTHONOPTIMIZE."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`tally --help` names `bench` and every other registered command, with its summary."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    help_words = capsys.readouterr().out.split()  # argparse wraps lines
    help_text = " ".join(help_words)
    assert "bench" in help_words
    for name, entry in cli.COMMANDS.items():
        assert name in help_words
        assert entry.summary in help_text


def test_help_imports_no_command_module() -> None:
    """Listing the commands imports none of their modules, so it is cheap and works early."""
    result = run_python(
        "-c",
        "import sys\n"
        "from core import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('core.') and m != 'core.cli'))\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_refuses_to_run_under_python_dash_o() -> None:
    """Under `python -O` the asserts are gone, so tally exits 2 with the refusal, doing nothing."""
    result = run_python("-O", "-m", "core", "--help")
    assert result.returncode == 2
    assert result.stderr.strip() == cli.REFUSAL_UNDER_OPTIMIZE
    assert result.stdout == ""


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped command is an argparse usage error: exit 2, naming the bad word."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_command_without_module_fails_with_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registered command whose module is not written yet exits 1 and says so, no traceback."""
    monkeypatch.setattr(
        cli, "COMMANDS", {"later": cli.module_command("core.not_written_yet", "comes later")}
    )
    assert cli.main(["later"]) == 1
    assert "module core.not_written_yet does not exist" in capsys.readouterr().err


DEFAULTED_COMMANDS = (
    "channels.http.serve",
    "loadtests.audit",
    "core.drills.failover",
    "loadtests.runner",
)


def test_packaged_defaults_equal_the_examples() -> None:
    """The rule file and channel registry shipped in core/data are byte for byte the ones
    in examples/, so what the README shows is what an installed `tally` runs with."""
    from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RULES_PATH

    for packaged in (DEFAULT_RULES_PATH, DEFAULT_CHANNELS_PATH):
        example = REPO_ROOT / "examples" / packaged.name
        assert packaged.read_bytes() == example.read_bytes(), f"{packaged} differs from {example}"


def test_packaged_risk_rules_and_lpr_equal_the_examples() -> None:
    """The risk rule set and the LPR table shipped in core/data (issue 15) are byte for
    byte the ones in examples/, and both load."""
    from core.data import DEFAULT_LPR_PATH, DEFAULT_RISK_PATH
    from limits.lpr import load_lpr
    from limits.risk import load_risk_rules

    for packaged in (DEFAULT_RISK_PATH, DEFAULT_LPR_PATH):
        example = REPO_ROOT / "examples" / packaged.name
        assert packaged.read_bytes() == example.read_bytes(), f"{packaged} differs from {example}"
    assert len(load_risk_rules(DEFAULT_RISK_PATH).rules) == 20
    assert load_lpr(DEFAULT_LPR_PATH).version >= 1


def test_packaged_loan_catalog_equals_the_example() -> None:
    """The loan product catalog shipped in core/data (issue 16) is byte for byte the one
    in examples/, and it loads with the three products."""
    from core.data import DEFAULT_LOANS_PATH
    from limits.loans import load_loan_catalog

    example = REPO_ROOT / "examples" / DEFAULT_LOANS_PATH.name
    assert DEFAULT_LOANS_PATH.read_bytes() == example.read_bytes()
    assert load_loan_catalog(DEFAULT_LOANS_PATH).product_ids == ("G-P-loan", "G-B-loan", "G-T-loan")


def test_tally_works_outside_a_checkout(tmp_path: Path) -> None:
    """From a directory with no examples/ in it, `tally --help` runs, and every command
    with a --rules or --channels default points at an absolute file that loads (the
    packaged one), never at a path relative to the working directory or the source tree."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    helped = subprocess.run(
        [str(Path(sys.executable).parent / "tally"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    probe = (
        "import argparse, importlib, sys\n"
        "from pathlib import Path\n"
        "from channels.registry import load_registry\n"
        "from limits.rules import load_rules\n"
        "for name in sys.argv[1:]:\n"
        "    parser = argparse.ArgumentParser()\n"
        "    importlib.import_module(name).add_arguments(parser)\n"
        "    for option, load in (('rules', load_rules), ('channels', load_registry)):\n"
        "        default = parser.get_default(option)\n"
        "        if default is None:\n"
        "            continue\n"
        "        assert Path(default).is_absolute(), (name, option, default)\n"
        "        assert not Path(default).is_relative_to(Path.cwd()), (name, option, default)\n"
        "        load(default)\n"
        "        print(name, option, default)\n"
    )
    resolved = subprocess.run(
        [sys.executable, "-c", probe, *DEFAULTED_COMMANDS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert resolved.returncode == 0, resolved.stderr
    lines = resolved.stdout.splitlines()
    assert sum(" rules " in line for line in lines) == len(DEFAULTED_COMMANDS), lines
    assert all("core/data/" in line for line in lines), lines
