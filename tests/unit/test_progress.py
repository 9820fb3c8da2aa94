"""The progress bar draws for a person at a terminal and stays silent everywhere else."""

from __future__ import annotations

import io

import pytest

from core.progress import progress_bar


class TerminalStream(io.StringIO):
    """A text stream that says it is a terminal, to see what a person would see."""

    def isatty(self) -> bool:
        return True


def test_draws_label_count_and_rate_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a TTY outside CI the bar shows its label and ends with every item counted."""
    monkeypatch.delenv("CI", raising=False)
    stream = TerminalStream()
    with progress_bar(2000, "posting", stream=stream) as progress:
        for _ in range(4):
            progress.update(500)
    drawn = stream.getvalue()
    assert "posting" in drawn
    assert "100%" in drawn
    assert "2.00k/2.00k" in drawn


@pytest.mark.parametrize("terminal, ci", [(False, None), (True, "true")])
def test_silent_off_a_terminal_or_in_ci(
    monkeypatch: pytest.MonkeyPatch, terminal: bool, ci: str | None
) -> None:
    """Into a pipe or a log, or under CI=true even on a TTY, nothing at all is written,
    so captured output and CI logs get no carriage returns."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    stream = TerminalStream() if terminal else io.StringIO()
    with progress_bar(100, "funding", stream=stream) as progress:
        progress.update(100)
    assert stream.getvalue() == ""
