"""The docs cannot drift from the code: the command reference against the argparse
definitions, the table of diagnostic codes against `CODES`, the tables of risk keys,
reason codes and account keys against dsl/risk_keys.py, every command line shown in
the docs against the parser, every relative link against the files and headings it
points to, and the Python API examples against their shown output."""
import argparse
import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from policyc import cli
from policyc.cli import build_parser
from policyc.dsl.diagnostics import CODES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS = DOCS / "commands.md"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
OPTION = re.compile(r"(?<![\w/.-])(--?[a-zA-Z][a-zA-Z0-9-]*)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
HELP = {"-h", "--help"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not set(a.option_strings) <= HELP]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def _sections(text: str) -> dict[str, str]:
    """`## heading` -> the text up to the next `## ` heading (code blocks included)."""
    out, name, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("## "):
            if name is not None:
                out[name] = "\n".join(lines)
            name, lines = line[3:].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = "\n".join(lines)
    return out


def _option_rows(section: str) -> dict[str, str]:
    """Option string -> the first cell of the table row that documents it, for the rows
    of the section's options table (a first cell made of `-x ...` spans)."""
    rows = {}
    for line in FENCE.sub("", section).splitlines():
        if not line.startswith("|"):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1].strip()
        spans = re.findall(r"`([^`]*)`", cell)
        if not spans or not all(s.startswith("-") for s in spans):
            continue
        for span in spans:
            rows[span.split()[0]] = cell
    return rows


def _expected_form(action: argparse.Action, option: str) -> str:
    """How the options table writes an option: `--fill next|same`, `--data [SYMBOL=]PATH`."""
    if action.nargs == 0:
        return option
    if action.choices:
        return f"{option} {'|'.join(map(str, action.choices))}".replace("|", "\\|")
    return f"{option} {action.metavar or action.dest.upper()}"


def _check_options(parser: argparse.ArgumentParser, section: str, where: str) -> list[str]:
    problems = []
    rows = _option_rows(section)
    actual = {s for a in _options(parser) for s in a.option_strings}
    for extra in sorted(set(rows) - actual - HELP):
        problems.append(f"{where}: documents `{extra}`, which it does not have")
    for action in _options(parser):
        documented = [s for s in action.option_strings if s in rows]
        if not documented:
            problems.append(f"{where}: `{'/'.join(action.option_strings)}` is not in its options table")
            continue
        cell = rows[documented[0]]
        forms = [_expected_form(action, s) for s in action.option_strings]
        if not any(f"`{form}`" in cell for form in forms):
            problems.append(f"{where}: `{documented[0]}` should be written as `{forms[-1]}` (metavar or choices)")
        default = action.default
        if action.nargs == 0 or default is None or default == [] or isinstance(default, bool):
            continue
        row = next(line for line in section.splitlines() if line.startswith("|") and cell in line)
        stated = re.findall(r"default:? `([^`]*)`", row)
        if not stated and "default" not in row:
            problems.append(f"{where}: `{documented[0]}` does not say its default ({default!r})")
        for value in stated:
            same = str(value) == str(default)
            if not same:
                try:
                    same = float(value) == float(default)
                except (TypeError, ValueError):
                    pass
            if not same:
                problems.append(f"{where}: `{documented[0]}` says default `{value}`, the parser has {default!r}")
    return problems


PARSER = build_parser()
SUBCOMMANDS = _subcommands(PARSER)


def _commands_md() -> str:
    return COMMANDS.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_and_option_is_in_the_command_reference(name):
    sections = _sections(_commands_md())
    assert name in sections, f"docs/commands.md has no `## {name}` section"
    problems = _check_options(SUBCOMMANDS[name], sections[name], name)
    section = FENCE.sub("", sections[name])
    for action in _positionals(SUBCOMMANDS[name]):
        if f"`{action.metavar}" not in section:
            problems.append(f"{name}: its argument {action.metavar} is not in its options table")
    assert not problems, "\n".join(problems)


def test_the_defaults_of_run_in_the_docs_are_the_runtimes():
    """`--max-clock-skew` and `--max-feed-silence` default to constants of
    `runtime/orders.py`; the command reference and the live contract say their values."""
    from policyc.runtime.orders import MAX_CLOCK_SKEW_S, MAX_FEED_SILENCE_S

    rows = {line.split("|")[1].strip(): line for line in _sections(_commands_md())["run"].splitlines()
            if line.startswith("| `--max-")}
    assert f"default `{MAX_CLOCK_SKEW_S:g}s`" in rows["`--max-clock-skew DURATION`"]
    assert f"default `{MAX_FEED_SILENCE_S:g}s`" in rows["`--max-feed-silence DURATION`"]
    live = " ".join((DOCS / "live.md").read_text(encoding="utf-8").split())
    assert f"(default {MAX_CLOCK_SKEW_S:g} s, `MAX_CLOCK_SKEW_S` in `runtime/orders.py`)" in live
    assert f"(default {MAX_FEED_SILENCE_S:g} s, `MAX_FEED_SILENCE_S` in `runtime/orders.py`)" in live


def test_global_options_are_in_the_command_reference():
    sections = _sections(_commands_md())
    assert "Global options" in sections
    problems = _check_options(PARSER, sections["Global options"], "policyc")
    assert "`-h`, `--help`" in sections["Global options"]
    assert not problems, "\n".join(problems)


def test_the_synopsis_lists_every_option_of_every_command():
    text = _commands_md()
    synopsis = FENCE.search(text).group(0)
    entries: dict[str, str] = {}
    current = None
    for line in synopsis.splitlines()[1:-1]:
        words = line.split()
        if line.startswith("policyc ") and len(words) > 1 and words[1] in SUBCOMMANDS:
            current = words[1]
            entries[current] = line
        elif line.startswith("policyc "):
            current = "policyc"
            entries[current] = line
        elif current:
            entries[current] += " " + line.strip()
    assert set(entries) == set(SUBCOMMANDS) | {"policyc"}, sorted(entries)
    problems = []
    for name, entry in entries.items():
        parser = PARSER if name == "policyc" else SUBCOMMANDS[name]
        found = set(OPTION.findall(entry))
        for action in _options(parser) + ([a for a in parser._actions if "-h" in a.option_strings]
                                         if name == "policyc" else []):
            if not found & set(action.option_strings):
                problems.append(f"synopsis of {name}: `{action.option_strings[-1]}` is missing")
            elif action.choices and "|".join(map(str, action.choices)) not in entry:
                problems.append(f"synopsis of {name}: `{action.option_strings[-1]}` should show {action.choices}")
        for extra in found - {s for a in parser._actions for s in a.option_strings}:
            problems.append(f"synopsis of {name}: `{extra}` does not exist")
        for action in _positionals(parser):
            if action.metavar not in entry:
                problems.append(f"synopsis of {name}: {action.metavar} is missing")
    assert not problems, "\n".join(problems)


def test_the_command_reference_names_no_option_that_does_not_exist():
    known = {s for a in PARSER._actions for s in a.option_strings}
    for sub in SUBCOMMANDS.values():
        known |= {s for a in sub._actions for s in a.option_strings}
    text = _commands_md()
    # every `-x` or `--long` in inline code, tables and code blocks; command lines shown
    # with `$` are also parsed as a whole below
    found = {m for span in re.findall(r"`([^`\n]+)`", text) for m in OPTION.findall(span)}
    for block in FENCE.findall(text):
        for line in block.splitlines():
            if line.lstrip().startswith(("policyc", "$ policyc")):
                found |= set(OPTION.findall(line.split(" | ")[0]))
    unknown = sorted(found - known)
    assert not unknown, f"docs/commands.md names options no command has: {unknown}"


def _command_lines(text: str):
    """Every `$ policyc ...` (or `.venv/bin/policyc`) line of a code block, with its
    backslash continuations, as argv without the program name and any pipe."""
    for block in FENCE.findall(text):
        lines = block.splitlines()
        k = 0
        while k < len(lines):
            line = lines[k]
            while line.endswith("\\") and k + 1 < len(lines):
                k += 1
                line = line[:-1] + " " + lines[k].strip()
            k += 1
            m = re.match(r"\s*\$ (?:\.venv/bin/)?policyc(?: |$)(.*)", line)
            if m:
                argv = shlex.split(m.group(1), comments=True)
                if "|" in argv:
                    argv = argv[: argv.index("|")]
                output = list(itertools.takewhile(lambda out: not out.lstrip().startswith("$ "), lines[k:]))
                refused = any(out.startswith("policyc: error:") for out in output)  # shown as a usage error
                yield line.strip(), argv, refused


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_parses(page, monkeypatch):
    """Options, choices and values as the parser checks them; the files an example names
    (`/tmp/bad.csv`, a shell glob) need not exist here."""
    monkeypatch.setattr(cli, "_input_file", lambda text: text, raising=False)
    problems = []
    for line, argv, refused in _command_lines(page.read_text(encoding="utf-8")):
        if refused:
            continue
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                problems.append(f"{line}  (exit {exc.code})")
    assert not problems, f"{page.name}: command lines the parser refuses:\n" + "\n".join(problems)


def _gen_codes():
    spec = importlib.util.spec_from_file_location("gen_codes", DOCS / "gen_codes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_of_diagnostic_codes_is_generated_from_CODES():
    gen = _gen_codes()
    text = _commands_md()
    assert gen.generate(text, CODES) == text, (
        "the table of codes in docs/commands.md differs from CODES in dsl/diagnostics.py; "
        "run .venv/bin/python docs/gen_codes.py")
    lo, hi = gen.block(text)
    assert re.findall(r"^\| `([A-Z]\d{3})` \|", text[lo:hi], re.M) == list(CODES)


def test_the_generator_keeps_the_written_column_and_follows_CODES():
    gen = _gen_codes()
    text = _commands_md()
    codes = dict(CODES)
    first = next(iter(codes))
    del codes[first]
    codes["E999"] = "a new code"
    new = gen.generate(text, codes)
    lo, hi = gen.block(new)
    table = new[lo:hi]
    assert f"`{first}`" not in table
    assert "| `E999` | error | a new code |  |" in table
    kept = gen.details(text)
    assert all(gen.details(new)[c] == kept[c] for c in codes if c in kept)


def test_the_tables_of_risk_keys_reason_codes_and_account_keys_are_generated_from_the_table():
    from policyc.compiler import layout as L
    from policyc.dsl import risk_keys

    spec = importlib.util.spec_from_file_location("gen_risk_keys", DOCS / "gen_risk_keys.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    assert gen.generate(text, risk_keys) == text, (
        "a table of docs/language.md differs from dsl/risk_keys.py; run .venv/bin/python docs/gen_risk_keys.py")
    lo, hi = gen.block(text, "REASON CODES")
    assert re.findall(r"^\| (\d+) \| `([^`]+)` \|", text[lo:hi], re.M) == [(str(i), c) for i, c in enumerate(L.REASONS)]
    lo, hi = gen.block(text, "RISK KEYS")
    assert re.findall(r"^\| \d+ \| `(\w+)` \|", text[lo:hi], re.M) == [
        *(name for name in risk_keys.RISK_KEYS if risk_keys.RISK_KEYS[name].step < risk_keys.CUSTOM_STEP), "custom",
        *(name for name in risk_keys.RISK_KEYS if risk_keys.RISK_KEYS[name].step > risk_keys.CUSTOM_STEP)]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    problems = []
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{target}: no heading with that anchor in {file.name}")
    assert not problems, f"{page.name}: broken links:\n" + "\n".join(problems)


def test_no_page_points_outside_the_repository():
    """Every path a page names upwards (`../x`) is a file or folder of the repository,
    relative to the page or to the repository's root, and no page names an absolute path of one machine: a user who clones
    the project has nothing else."""
    outside = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"(?<![\w/.])((?:\.\./)+[\w./-]+)", text):
            for base in (page.parent, ROOT):  # relative to the page (links) or to the repo (commands)
                target = (base / path).resolve()
                if target.exists() and (target == ROOT or ROOT in target.parents):
                    break
            else:
                outside.append(f"{page.name}: {path}")
        outside += [f"{page.name}: {path}" for path in re.findall(r"/work/[\w./-]+", text)]
    assert not outside, "\n".join(outside)


def test_the_readme_starts_with_make_demo_and_make_test():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "    make demo    # creates .venv, installs, and runs the example policies on the bundled data"
    assert lines[3] == "    make test    # creates .venv if missing, installs with test extras, runs the test suite"


def _examples(page: Path):
    """Each ```python block followed by `Output:` and a block of its expected output."""
    text = page.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```\n\s*Output:\s*\n```\n(.*?)^```", text, re.M | re.S)


def test_the_python_api_examples_print_what_the_docs_show():
    examples = _examples(DOCS / "api.md")
    assert len(examples) == 2
    for code, expected in examples:
        result = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected
