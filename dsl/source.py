"""Source text and positioned YAML.

PyYAML's composer keeps a start and end mark on every node. We keep the node tree next
to the plain Python values built from it, keyed by path, so that every later stage can
point at the exact line and column of what it complains about, down to a character
inside an expression.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .diagnostics import PolicyError, Span, error

MAX_FILE_BYTES = 256_000
MAX_NODES = 20_000

PathKey = tuple  # a path of mapping keys (str) and list indices (int)


@dataclass
class SourceFile:
    """The text of one policy file and a fast offset -> (line, column) index."""

    name: str
    text: str
    _line_starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        starts = [0]
        for i, ch in enumerate(self.text):
            if ch == "\n":
                starts.append(i + 1)
        self._line_starts = starts

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def position(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def span(self, start: int, end: int) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(max(end, start + 1))
        return Span(self.name, line, col, end_line, end_col)

    def node_span(self, node: yaml.Node) -> Span:
        return self.span(node.start_mark.index, node.end_mark.index)


def read_source(path: str | Path, display_name: str | None = None) -> SourceFile:
    """Read a policy file as UTF-8 text, refusing binary, empty and oversized input."""
    name = display_name or str(path)
    here = Span(name, 1, 1, 1, 2)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise PolicyError([error("E001", here, "is a directory, not a policy file")])
    except OSError as exc:
        raise PolicyError([error("E001", here, f"cannot read file: {exc.strerror or exc}")])
    return source_from_bytes(raw, name)


def source_from_bytes(raw: bytes, name: str) -> SourceFile:
    here = Span(name, 1, 1, 1, 2)
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError([error(
            "E001", here,
            f"file is too large ({len(raw) / 1e6:.1f} MB); a policy file may be at most {MAX_FILE_BYTES // 1000} kB",
        )])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        src = SourceFile(name, raw[: exc.start].decode("utf-8", "replace"))
        line, col = src.position(exc.start)
        raise PolicyError([error(
            "E001", Span(name, line, col, line, col + 1),
            f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "policy files are YAML text; is this the right file?",
        )])
    if "\x00" in text:
        src = SourceFile(name, text)
        line, col = src.position(text.index("\x00"))
        raise PolicyError([error("E001", Span(name, line, col, line, col + 1),
                                 "file contains NUL bytes; it looks binary, not a YAML policy")])
    # one kind of line break, so our line numbers agree with YAML's
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x85", "\n") \
        .replace("\u2028", "\n").replace("\u2029", "\n")
    if text.count(",") + text.count("\n") + text.count("- ") > 4 * MAX_NODES:
        raise PolicyError([error("E003", here, "document is too large: a policy has at most "
                                 f"{MAX_NODES:,} YAML values")])
    if not text.strip():
        raise PolicyError([error("E001", here, "file is empty",
                                 "a policy needs at least `policy`, `version`, `instruments` and `signals`")])
    return SourceFile(name, text)


class _Loader(yaml.SafeLoader):
    """Compose-only loader: we never construct arbitrary Python objects from YAML tags."""


@dataclass
class Positioned:
    """A YAML document as plain values plus the node of every path, for spans."""

    source: SourceFile
    value: Any
    nodes: dict[PathKey, yaml.Node]
    keys: dict[PathKey, yaml.Node]  # the key node of every mapping entry

    def span(self, path: PathKey, *, key: bool = False) -> Span:
        """The span of the value at `path` (or of its key), or of the nearest parent."""
        table = self.keys if key else self.nodes
        p = tuple(path)
        while p:
            if p in table:
                return self.source.node_span(table[p])
            if p in self.nodes:
                return self.source.node_span(self.nodes[p])
            p = p[:-1]
        node = self.nodes.get((), None)
        return self.source.node_span(node) if node is not None else Span(self.source.name, 1, 1, 1, 2)


def compose(source: SourceFile) -> Positioned:
    """Parse YAML into positioned values; YAML errors and duplicate keys become diagnostics."""
    try:
        root = yaml.compose(source.text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        line, col = source.position(exc.position)
        what = f"character 0x{exc.character:02x}" if isinstance(exc.character, int) else f"character {exc.character!r}"
        raise PolicyError([error("E002", Span(source.name, line, col, line, col + 1),
                                 f"YAML: {what} is not allowed in a policy file",
                                 "remove the control character")])
    except yaml.MarkedYAMLError as exc:  # scanner, parser and composer errors
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        # the composer states its error in `context` ("found duplicate anchor 'a'; first
        # occurrence") and leaves only "second occurrence" in `problem`
        composer = isinstance(exc, yaml.composer.ComposerError) and exc.context
        problem = exc.context.split(";")[0] if composer else exc.problem or exc.context or "invalid YAML"
        raise PolicyError([error("E002", Span(source.name, line, col, line, col + 1), f"YAML: {problem}",
                                 _yaml_help(exc, source))])
    except RecursionError:
        raise PolicyError([error("E002", Span(source.name, 1, 1, 1, 2), "YAML is nested too deeply",
                                 "a policy is at most 50 levels deep")])
    if root is None:
        raise PolicyError([error("E001", Span(source.name, 1, 1, 1, 2), "file holds no YAML document")])
    doc = Positioned(source, None, {}, {})
    diags = []
    count = [0]

    def build(node: yaml.Node, path: PathKey, depth: int):
        count[0] += 1
        if count[0] > MAX_NODES or depth > 50:
            raise PolicyError([error("E003", source.node_span(node), "document is too large or too deeply nested")])
        doc.nodes[path] = node
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    diags.append(error("E003", source.node_span(key_node), "a mapping key must be a plain name"))
                    continue
                key = key_node.value
                if key in out:
                    first = doc.keys[path + (key,)]
                    diags.append(error("E005", source.node_span(key_node), f"duplicate key `{key}`",
                                       f"`{key}` is first defined on line {first.start_mark.line + 1}"))
                    continue
                doc.keys[path + (key,)] = key_node
                out[key] = build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return _scalar(node)

    doc.value = build(root, (), 0)
    if diags:
        raise PolicyError(diags)
    return doc


def _scalar(node: yaml.ScalarNode) -> Any:
    """The typed value of a scalar by PyYAML's safe rules (int, float, bool, null, str)."""
    try:
        return _CONSTRUCTOR.construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


#: A help line for each kind of PyYAML error, matched on its text (first match wins): the
#: raw text names a token ("expected <block end>"), not the change that fixes the file.
#: {line} is the line where the construct PyYAML was reading began, {found} the character
#: or token it found (in backticks).
_YAML_HELP = [
    (("'\\t'",), "replace the tab with spaces: YAML indentation must use spaces, not tabs"),
    (("cannot start any token",), "a YAML value cannot start with {found}: put the value in quotes"),
    (("could not find expected ':'",),
     "line {line} is read as a key but has no `:` after it: add the `:`, or indent the line if it continues "
     "the value above"),
    (("sequence entries are not allowed",), "a `- ` list item must start its own line, indented under its key"),
    (("mapping keys are not allowed",), "`?` cannot follow a value on its line: put the whole value in quotes"),
    (("double-quoted scalar",),
     "in double quotes `\\` starts an escape: write `\\\\` for a backslash, or use single quotes"),
    (("quoted scalar",), "the quote opened on line {line} is never closed"),
    (("flow sequence",), "the `[` on line {line} is not closed: end the list with `]` and separate items with `,`"),
    (("flow mapping",), "the `{{` on line {line} is not closed: end it with `}}` and separate entries with `,`"),
    (("but found ']'", "but found '}'"), "{found} closes no open bracket: remove it, or put the value in quotes"),
    (("but found ','",), "a value is missing before this `,`: put a value that contains `,` in quotes"),
    (("content, but found ':'", "content, but found '-'", "content, but found '?'"),
     "put a value that starts with {found} in quotes"),
    (("'<document end>'",), "a `...` line ends the YAML document: remove it"),
    (("'<stream end>'",), "the file ends where a value is expected"),
    (("<block end>",),
     "check the indentation: the keys of one mapping, and the `- ` items of one list, must start in the "
     "same column"),
    (("anchor", "alias"), "`&` starts a YAML anchor and `*` an alias, which a policy does not need: put a value "
                          "that starts with `&` or `*` in quotes"),
    (("directive", "YAML document", "duplicate tag handle"),
     "a line starting with `%` is a YAML directive, which a policy does not need: remove it"),
    (("a tag", "tag handle"), "`!` starts a YAML tag, which a policy does not need: put a value that starts with "
                              "`!` in quotes"),
    (("block scalar",), "`|` and `>` start a block of text on the next lines: put a value that starts with `|` "
                        "or `>` in quotes"),
    (("<document start>",), "the YAML document ended before this line: top-level keys must start in column 1, "
                            "with no `...` or `%` line before them"),
    (("single document",), "a policy file holds one YAML document: remove the `---` line"),
]


def _yaml_help(exc: yaml.MarkedYAMLError, source: SourceFile) -> str:
    text = f"{exc.context or ''}: {exc.problem or ''}"
    if "mapping values are not allowed" in text:
        # `a: b: c` has a second `:` on the line; a line without one is indented under a plain value
        mark = exc.problem_mark
        before = source.lines[mark.line][: mark.column]
        return "a value containing `: ` must be quoted" if ":" in before else \
            "check the indentation: this line is indented deeper than the key above, so YAML reads it as " \
            "part of that key's value"
    found = (re.findall(r"'([^']*)'", exc.problem or "") or [""])[-1]
    fields = {"line": exc.context_mark.line + 1 if exc.context_mark else "?",
              "found": f"`` {found} ``" if "`" in found else f"`{found}`"}
    for patterns, help_ in _YAML_HELP:
        if any(p in text for p in patterns):
            return help_.format(**fields)
    return "check the YAML syntax here; a value with special characters may need quotes"


def scalar_text_offsets(source: SourceFile, node: yaml.ScalarNode) -> list[int]:
    """File offset of every character of a scalar's value, plus one past its end.

    Plain and quoted scalars fold newlines and indentation into single spaces; block
    scalars start on the next line. We align the value against the raw text so that a
    column inside an expression maps to the right place in the file.
    """
    value = node.value
    raw = source.text
    pos = node.start_mark.index
    end = node.end_mark.index
    indent = 0
    if node.style in ("|", ">"):
        nl = raw.find("\n", pos, end)
        pos = nl + 1 if nl >= 0 else pos
        while pos + indent < end and raw[pos + indent] == " ":
            indent += 1
    elif node.style in ("'", '"'):
        pos += 1
    offsets = []
    for ch in value:
        if ch == " " and pos < end and raw[pos] in " \t\n":
            run = pos
            while run < end and raw[run] in " \t\n":
                run += 1
            offsets.append(pos)
            pos = run if "\n" in raw[pos:run] else pos + 1  # a folded line break, or one space
            continue
        probe = pos
        while probe < end and raw[probe] != ch:
            probe += 1
        if probe < end:
            pos = probe
        offsets.append(pos)
        pos = min(pos + 1, end)
        if ch == "\n" and indent:  # a block scalar's indentation is not part of its value
            pos = min(pos + indent, end)
    offsets.append(pos)
    return offsets
