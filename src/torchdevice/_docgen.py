"""Regenerate the documentation blocks that are derived from code.

Generated blocks sit between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` markers; text outside them is hand-written.

* ``env-table`` (README.md): the environment variables, from
  ``core/config.py`` ``VARIABLES`` (name, accepted values, default, meaning).
* ``settings-table`` (README.md): the keyword settings of ``torchdevice.patch()``,
  from ``core/config.py`` ``SETTINGS``.
* ``cli-reference`` (docs/cli.md): every subcommand's options, from the
  argument parser in ``__main__.py``.

Usage (from a checkout)::

    python -m torchdevice._docgen          # rewrite the blocks in place
    python -m torchdevice._docgen --check  # exit 1 and list stale files

tests/test_docs.py runs the check. Standard library only; imports no torch.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def env_table() -> str:
    from .core import config

    lines = ["| variable | accepted values | default | meaning |", "|---|---|---|---|"]
    for name, (accepted, default, meaning) in config.VARIABLES.items():
        lines.append(f"| `{name}` | {_cell(accepted)} | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(lines)


def settings_table() -> str:
    from .core import config

    lines = ["| keyword | type | same as | accepted values |", "|---|---|---|---|"]
    for name, (variable, types, _) in config.SETTINGS.items():
        lines.append(f"| `{name}` | {_cell(types)} | `{variable}` | {_cell(config.VARIABLES[variable][0])} |")
    return "\n".join(lines)


def _options(parser):
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" + (f" {action.metavar}" if action.metavar and action.nargs != 0 else "")
                             for s in action.option_strings)
        else:
            name = f"`{action.dest}`" + (" ..." if action.nargs in ("*", "+", argparse.REMAINDER) else "")
        rows.append(f"| {_cell(name)} | {_cell(action.help or '')} |")
    return rows


def cli_reference() -> str:
    from .__main__ import build_parser

    parser = build_parser()
    out = [f"`{parser.prog}`: {parser.description}", "", "| option | meaning |", "|---|---|"]
    out += _options(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        usage = command.format_usage().replace("usage: ", "", 1).strip()
        usage = re.sub(r"\s+", " ", usage)
        out += ["", f"### `torchdevice {name}`", "", f"`{usage}`", "", _cell(command.description or ""), "",
                "| option | meaning |", "|---|---|"]
        out += _options(command)
    out += ["", _cell(parser.epilog or "")]
    return "\n".join(out)


BLOCKS = {
    "env-table": ("README.md", env_table),
    "settings-table": ("README.md", settings_table),
    "cli-reference": ("docs/cli.md", cli_reference),
}


def _replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n).*?(<!-- END GENERATED: {re.escape(name)} -->)",
                         re.S)
    if not pattern.search(text):
        raise ValueError(f"markers for generated block {name!r} not found")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text, count=1)


def stale(root: str = ROOT):
    """Files whose generated blocks differ from what the code gives now."""
    out = []
    for name, (path, render) in BLOCKS.items():
        full = os.path.join(root, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        if _replace(text, name, render()) != text:
            out.append(f"{path} ({name})")
    return out


def write(root: str = ROOT) -> None:
    for name, (path, render) in BLOCKS.items():
        full = os.path.join(root, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        new = _replace(text, name, render())
        if new != text:
            with open(full, "w", encoding="utf-8") as f:
                f.write(new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdevice._docgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    parser.add_argument("--root", default=ROOT, help="checkout to work on (default: this checkout)")
    options = parser.parse_args(argv)
    if options.check:
        found = stale(options.root)
        for item in found:
            print(f"stale generated docs: {item}; run python -m torchdevice._docgen", file=sys.stderr)
        return 1 if found else 0
    write(options.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
