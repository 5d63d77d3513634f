"""Reading a session's options: unknown names and bad values are the client's error."""

from service.worker.runner import OptionError

# name -> (type, default, minimum, maximum)
OptionSpec = dict[str, tuple[type, object, float | None, float | None]]


def read_options(options: dict, spec: OptionSpec) -> dict:
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)}; this model takes "
            f"{', '.join(sorted(spec)) or 'none'}"
        )
    values = {}
    for name, (kind, default, low, high) in spec.items():
        raw = options.get(name, default)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise OptionError(f"option {name}={raw!r} is not a {kind.__name__}") from None
        if value != value:  # NaN passes every comparison below
            raise OptionError(f"option {name} is NaN")
        if (low is not None and value < low) or (high is not None and value > high):
            raise OptionError(f"option {name}={value} is outside [{low}, {high}]")
        values[name] = value
    return values


def given_options(**values) -> dict:
    """The session options a client gave: those left None are not sent, so the model's own
    defaults apply (and a model without, say, an action stage sees no action option)."""
    return {name: value for name, value in values.items() if value is not None}
