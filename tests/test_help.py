"""Every `vidserve` command's --help tells the truth: each option and argument has a description,
and the defaults and environment variables it declares are printed (Rich markup must not eat
them, as it once ate "[env VIDSERVE_PORT, 8000]")."""

import pytest
import typer
from typer.testing import CliRunner

from service.cli import app

WIDE = {"COLUMNS": "1000"}  # one line an option: nothing is wrapped


def commands(group, path: tuple[str, ...] = ()):
    """(command path, click command) of every command, sub-apps' included."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # a group: typer's sub-app
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = list(commands(typer.main.get_command(app)))


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_walked():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "worker", "segment", "synth", "eval"} <= names
    assert {
        "train vis",
        "train vos",
        "train vos-retune",
        "train instance",
        "train panoptic",
        "train action",
    } <= names
    assert {"checkpoints import", "checkpoints list", "checkpoints verify"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_option_is_described_with_its_default_and_environment_variable(path, command):
    text = help_text(path)
    for param in command.params:
        label = f"{' '.join(path)} {param.name}"
        description = getattr(param, "help", None)
        assert description and description.strip(), f"{label} has no description"
        # The description as written reaches the output: no markup ate part of it.
        assert one_line(description) in text, f"{label}: {description!r} is not printed whole"
        for variable in _envvars(param):
            assert f"[env var: {variable}]" in text, f"{label}: {variable} not shown"
        default = _declared_default(param)
        if default is not None:
            assert f"[default: {default}]" in text, f"{label}: default {default!r} not shown"


def _envvars(param) -> list[str]:
    if not param.envvar:
        return []
    return [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)


def _declared_default(param) -> str | None:
    """The default text the option declares: its show_default string (printed in brackets as
    "(text)"), or its default value when shown; None when there is none to show."""
    show = getattr(param, "show_default", None)
    if show is False or getattr(param, "is_flag", False) and param.default is False:
        return None
    if isinstance(show, str):
        return f"({show})"
    if param.default is None or param.name == "help":
        return None
    value = param.default
    return str(value.value if hasattr(value, "value") else value)


def test_serve_help_shows_the_port_its_variable_and_its_default():
    text = help_text(("serve",))
    port_line = next(line for line in text.splitlines() if "--port " in line)
    assert "REST port." in port_line
    assert "VIDSERVE_PORT" in port_line and "8000" in port_line
    assert "REST port ." not in text


def test_the_environment_variables_shown_are_settings_that_are_read():
    from service.settings import Settings

    for path, command in COMMANDS:
        for param in command.params:
            for variable in _envvars(param):
                field = variable.removeprefix("VIDSERVE_").lower()
                assert field in Settings.model_fields, f"{' '.join(path)}: {variable} is no setting"
    # ...and the command reads the variable itself: a bad value is refused, naming it.
    result = CliRunner().invoke(app, ["serve"], env={**WIDE, "VIDSERVE_PORT": "not-a-port"})
    assert result.exit_code == 2
    assert "VIDSERVE_PORT" in result.output
