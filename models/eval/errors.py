"""The one error type the evaluators raise for bad input."""


class EvalInputError(ValueError):
    """Ground truth or predictions that cannot be evaluated; the message names the entry."""
