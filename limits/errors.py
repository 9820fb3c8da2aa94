"""The one exception `limits/` raises for operating errors.

A rule file is written by an operator, so its mistakes are operating errors,
not programmer errors: they are reported, never asserted. Every problem is
one line that names the file, the dotted key and the reason, and all of a
file's problems travel in one exception so the operator fixes the file in
one pass instead of one error per restart.
"""

from __future__ import annotations

from collections.abc import Sequence


class RuleFileError(Exception):
    """A rule file (or the time zone it names) cannot be used.

    `problems` holds one line per problem, in the order they were found;
    `str(error)` is those lines joined by newlines.
    """

    problems: tuple[str, ...]

    def __init__(self, problems: Sequence[str]) -> None:
        assert len(problems) > 0
        assert all(isinstance(problem, str) and problem for problem in problems)
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))
