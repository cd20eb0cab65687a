"""Exceptions with messages meant for a human; the CLI prints them as one line."""


class HlbdError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class DatasetError(HlbdError):
    """A dataset file is missing, unreadable, malformed or empty."""


class StoreError(HlbdError):
    """The run database cannot be used as asked (schema, unknown id, ...)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer hlbd than this one."""


class UnknownRunError(StoreError):
    """No run (or more than one run) matches the given id or prefix."""


class CheckpointError(HlbdError):
    """A checkpoint file is missing, truncated, foreign or contradicts the flags."""


class QueryError(HlbdError):
    """User SQL failed: a write was refused, the time limit was hit, or it is invalid."""


class QueryInterrupted(QueryError):
    """User SQL ran past its time limit and was stopped."""


class QueryTooLarge(QueryError):
    """User SQL needed more memory than its limit and was stopped."""


class NoDatabaseError(StoreError):
    """The database a read command was pointed at does not exist (nothing was created)."""


class RunClaimedError(StoreError):
    """Another live segment holds the run, or won the race to claim it; nothing written."""


class ClaimLostError(StoreError):
    """This segment's claim on the run was taken over; it stops without writing more."""


class InvalidTagError(HlbdError, ValueError):
    """A tag or note that cannot be stored (empty, too long, a comma in a tag)."""
