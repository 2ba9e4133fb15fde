"""Service configuration: frozen dataclasses whose fields come from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")
_PARSERS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": None}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class ConfigError(SystemExit):
    """A configuration value is missing or malformed; exits the process with the message."""


def setting(env: str, default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """Declare a config field read from ``--flag`` or the environment variable ``env``; no default = required."""
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


def _convert(raw: str, type_name: str, source: str) -> Any:
    if type_name == "bool":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{source}: expected a boolean (true/false), got {raw!r}")
    try:
        return _PARSERS[type_name](raw)
    except ValueError:
        raise ConfigError(f"{source}: expected {type_name}, got {raw!r}") from None


def parse_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    description: str | None = None,
) -> C:
    """Build ``cls`` from command-line flags (``--field-name``), its env variables and its defaults."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=description or cls.__doc__)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        if str(f.type) not in _PARSERS:
            raise TypeError(f"config field {f.name}: unsupported type {f.type!r}")
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=f"{f.metadata['help']} [env {f.metadata['env']}]{default}",
        )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields:
        flag, env = "--" + f.name.replace("_", "-"), f.metadata["env"]
        if getattr(args, f.name) is not None:
            values[f.name] = _convert(getattr(args, f.name), str(f.type), flag)
        elif environ.get(env):
            values[f.name] = _convert(environ[env], str(f.type), env)
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"missing required setting: set {env} or pass {flag} ({f.metadata['help']})")
    return cls(**values)


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: one line, no column breaks, no HTML tags or emphasis."""
    for char in ("\\", "|", "<", "*"):
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def _default_cell(field: dataclasses.Field[Any]) -> str:
    if field.default is dataclasses.MISSING:
        return "required"
    return f"`{field.default}`" if field.default != "" else '`""` (empty)'


def reference_markdown(classes: Sequence[type]) -> str:
    """A Markdown reference of config dataclasses: per class a heading, its docstring, and one table row per field
    (flag, environment variable, type, default or "required", help), in the order ``parse_config`` declares them."""
    sections = []
    for cls in classes:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"expected a config dataclass, got {cls!r}")
        doc = (cls.__doc__ or "").strip().splitlines()
        lines = [f"## `{cls.__name__}` (`{cls.__module__}`)", ""]
        if doc:
            lines += [doc[0], ""]
        lines += ["| flag | environment variable | type | default | help |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            row = (f"`{flag}`", f"`{f.metadata['env']}`", f"`{type_name}`", _default_cell(f), _cell(f.metadata["help"]))
            lines.append("| " + " | ".join(row) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
