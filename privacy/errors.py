"""Errors of the privacy layers."""


class PrivacyError(ValueError):
    """A privacy parameter, message or report that cannot be used as given."""


class ProtocolAbort(PrivacyError):
    """A secure-aggregation session cannot complete and was aborted; nothing was revealed."""
