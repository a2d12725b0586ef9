"""The one base class of lvd's domain errors.

Every error a user can cause or fix (a wrong config, a missing or damaged input, an unreachable
store, a refused rerun) derives from `LvdError` as well as from the builtin it refines, so
callers that catch ``ValueError`` keep working and the command line prints any of them as
``lvd: <message>`` with a non-zero exit instead of a traceback.
"""


class LvdError(Exception):
    """An error whose message tells the user what to change; never a bug in lvd."""
