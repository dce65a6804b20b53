"""Commands whose optional dependencies are not installed say which extra to install.

The base install (``pip install edge-ser``) is the runtime: numpy, soundfile, soxr and click.
Training, conversion and the backend runtimes come with extras declared in pyproject.toml
(``[onnx]``, ``[executorch]``, ``[train]``, ``[convert]``, ``[all]``). This module reads those
declarations from the installed package's metadata, so the extra a message names is the one
pip would install, and turns a missing third-party module into one line:

    Error: edge-ser train needs the [train] extra (module 'torch' is not installed).
    Install it with: pip install 'edge-ser[train]'
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from typing import Any, Mapping

import click

from edge_ser.errors import EdgeSerError

DISTRIBUTION = "edge-ser"

# Import names whose distribution is named differently; the rest map by normalizing the name.
_DISTRIBUTION_OF_IMPORT = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "google": "protobuf",
    "PIL": "pillow",
}

_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(EdgeSerError, ImportError):
    """A command needs an optional dependency that is not installed."""

    def __init__(self, command: str, extra: str | None, module: str) -> None:
        self.command, self.extra, self.module = command, extra, module
        target = f"'{DISTRIBUTION}[{extra}]'" if extra else f"'{DISTRIBUTION}[all]'"
        needs = f"the [{extra}] extra" if extra else "an optional dependency"
        super().__init__(f"edge-ser {command} needs {needs} (module {module!r} is not installed). "
                         f"Install it with: pip install {target}")


def normalize(name: str) -> str:
    """A distribution name in its canonical form (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_of_module(module: str) -> str:
    """The distribution that provides top-level import ``module`` (``sklearn`` -> ``scikit-learn``)."""
    top = module.split(".")[0]
    return normalize(_DISTRIBUTION_OF_IMPORT.get(top, top))


def parse_extras(requirements: list[str]) -> dict[str, frozenset[str]]:
    """Extra -> every distribution it installs (an ``edge-ser[a,b]`` entry brings a's and b's).

    ``requirements``: ``Requires-Dist`` lines, e.g. ``torch<2.14,>=2.13.0; extra == "train"``.
    """
    direct: dict[str, set[str]] = {}
    nested: dict[str, set[str]] = {}
    for line in requirements:
        requirement, _, marker = line.partition(";")
        extra_match = _EXTRA_MARKER.search(marker)
        name_match = _REQUIREMENT_NAME.match(requirement)
        if extra_match is None or name_match is None:
            continue  # a base requirement
        extra = normalize(extra_match.group(1))
        name = normalize(name_match.group(1))
        if name == DISTRIBUTION:
            nested.setdefault(extra, set()).update(normalize(e) for e in (name_match.group(2) or "").split(",") if e.strip())
        else:
            direct.setdefault(extra, set()).add(name)

    def expand(extra: str, seen: frozenset[str]) -> set[str]:
        names = set(direct.get(extra, ()))
        for inner in nested.get(extra, ()):
            if inner not in seen:
                names |= expand(inner, seen | {inner})
        return names

    return {extra: frozenset(expand(extra, frozenset({extra}))) for extra in set(direct) | set(nested)}


@functools.lru_cache(maxsize=1)
def installed_extras() -> Mapping[str, frozenset[str]]:
    """The extras of the installed edge-ser (empty when running from a tree that is not installed)."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    return parse_extras(requirements)


def extra_for(module: str, preferred: str | None, extras: Mapping[str, frozenset[str]] | None = None) -> str | None:
    """The extra to install for a missing ``module``: ``preferred`` (the command's own extra) if it
    provides it, else the smallest extra that does, else ``preferred``."""
    extras = installed_extras() if extras is None else extras
    distribution = distribution_of_module(module)
    if preferred is not None and distribution in extras.get(preferred, ()):
        return preferred
    providing = sorted((len(names), extra) for extra, names in extras.items() if distribution in names)
    return providing[0][1] if providing else preferred


def is_first_party(module: str) -> bool:
    return module.split(".")[0] == "edge_ser"


def guard_command(command: click.Command, extra: str | None, path: str | None = None) -> None:
    """Make ``command`` (and a group's subcommands) report a missing third-party module as a
    :class:`MissingExtraError` naming the extra, instead of a traceback."""
    path = path or command.name or "?"
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            guard_command(sub, extra, f"{path} {name}")
    callback = command.callback
    if callback is None or getattr(callback, "_edge_ser_guarded", False):
        return

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if not exc.name or is_first_party(exc.name):
                raise
            raise MissingExtraError(path, extra_for(exc.name, extra), exc.name) from exc

    guarded._edge_ser_guarded = True  # type: ignore[attr-defined]
    command.callback = guarded


def needs_extra_command(name: str, extra: str | None, module: str) -> click.Command:
    """A stand-in for a command whose module could not be imported: listed by ``--help`` with the
    extra it needs; running it (with any arguments) fails with :class:`MissingExtraError`."""
    error = MissingExtraError(name, extra_for(module, extra), module)
    install = f"pip install '{DISTRIBUTION}[{error.extra or 'all'}]'"

    @click.command(name=name, help=f"Not installed here: {error}",
                   short_help=f"(needs {install})",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stand_in(args: tuple[str, ...]) -> None:
        raise error

    return stand_in


def guard_registered(root: click.Group, commands: Mapping[str, str | None]) -> None:
    """Guard each of ``commands`` (name -> extra) that ``root`` has."""
    for name, extra in commands.items():
        if name in root.commands:
            guard_command(root.commands[name], extra)


__all__ = ["MissingExtraError", "distribution_of_module", "extra_for", "guard_command", "guard_registered",
           "installed_extras", "needs_extra_command", "normalize", "parse_extras"]
