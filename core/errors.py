"""The root of Tally's operating errors (I/O, database, timeouts, capacity).

Business outcomes are result codes, never exceptions; programmer errors are
assertions. Everything else that can go wrong while operating derives from
TallyError, with a message that says what and where.
"""


class TallyError(Exception):
    """An operating error: the caller may retry, shed load or stop, but it is not a bug."""
