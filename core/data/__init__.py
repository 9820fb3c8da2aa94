"""The default limit rules and channel registry, shipped inside the package.

`tally serve`, `tally audit`, `tally drill`, `tally loadtest` and the simulator read them
when no `--rules`/`--channels` is given, so an installed `tally` works from any directory,
not only from the root of a checkout. They are copies of `examples/limits.toml` and
`examples/channels.toml`, the files a reader studies and edits; a test keeps each copy
byte for byte equal to its example.
"""

from pathlib import Path

DATA_DIRECTORY = Path(__file__).resolve().parent
DEFAULT_RULES_PATH = DATA_DIRECTORY / "limits.toml"
DEFAULT_CHANNELS_PATH = DATA_DIRECTORY / "channels.toml"
DEFAULT_DEPOSITS_PATH = DATA_DIRECTORY / "deposits.toml"  # the deposit catalog (issue 14)
DEFAULT_RISK_PATH = DATA_DIRECTORY / "risk.toml"  # the risk rule set (issue 15)
DEFAULT_LPR_PATH = DATA_DIRECTORY / "lpr.toml"  # the loan prime rate table (issue 15)
DEFAULT_OPERATORS_PATH = DATA_DIRECTORY / "operators.toml"  # operators and roles (issue 15)
DEFAULT_LOANS_PATH = DATA_DIRECTORY / "loans.toml"  # the loan product catalog (issue 16)
