"""`policyc`: the command line. Exit 0 on success, 1 on diagnostics and data problems,
2 on usage errors, 3 on an internal error.

No Python traceback ever reaches the user: policy problems are diagnostics; data problems
are one `error:` line naming the file, line and value (with `backtest --format json`, a
JSON array like the diagnostics'); usage problems are the command's usage and one
`policyc: error:` line naming the word at fault and, when one is close, the word meant (a
command, an option, a choice, a sweep range), or what policyc calls what another tool
calls `--html`, `--start` or `--json`. A file the command line names that does not
exist, is a directory or is not a regular file is a usage error, for every option that
reads one; so is an output file that cannot be created, found before the run. Anything
unexpected is reported as an internal error.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

from policyc.compiler import jit
from policyc.dsl.diagnostics import Diagnostic, PolicyError, render_json, render_text, sort_key

# words other tools use -> what policyc has for them (the first word an option of the
# command, `--format json` only where `--format` offers json); shown as "did you mean"
_OUTPUTS = ("--out", "--orders", "--report", "--trace")
OPTION_SYNONYMS = {
    "--html": ("--report",), "--start": ("--from",), "--begin": ("--from",), "--since": ("--from",),
    "--start-date": ("--from",), "--from-date": ("--from",), "--end": ("--to",), "--until": ("--to",),
    "--stop": ("--to",), "--end-date": ("--to",), "--to-date": ("--to",), "--json": ("--format json",),
    "--out": _OUTPUTS, "--output": _OUTPUTS, "-o": ("-o", *_OUTPUTS), "-V": ("--version",),
    "--workers": ("--jobs",), "--processes": ("--jobs",), "--threads": ("--jobs",), "-j": ("--jobs",),
    "--capital": ("--initial-equity",), "--equity": ("--initial-equity",), "--cash": ("--initial-equity",),
    "--initial-capital": ("--initial-equity",), "--initial-cash": ("--initial-equity",),
    "--input": ("--data",), "--csv": ("--data",), "--timeout": ("--duration",), "--seconds": ("--duration",),
    "--port": ("--listen",), "--bind": ("--listen",), "--host": ("--listen",),
}
COMMAND_SYNONYMS = {"check": "validate", "lint": "validate", "build": "compile", "test": "backtest",
                    "simulate": "backtest", "optimize": "sweep", "optimise": "sweep", "grid": "sweep",
                    "trade": "run", "live": "run", "replay": "replay-feed", "feed": "replay-feed",
                    "paper": "paper-venue", "venue": "paper-venue"}
_META = ("-h", "--help", "--version")  # suggested only for a near miss, never for a longer unrelated word


def _close(word: str, known) -> str | None:
    """The known word meant by `word`, or None: the same word with `-` for `_` or in
    another case; a known option that `word` extends (`--report-html`); or a near
    spelling (difflib ratio 0.75 or more; for --help and --version, 0.8 and at most two
    characters longer or shorter)."""
    known = sorted(set(known))
    norm = word.replace("_", "-")
    for k in known:
        if k.lower() == norm.lower():
            return k
    extended = [k for k in known if len(k.strip("-")) >= 3 and norm.startswith(k + "-")]
    if extended:
        return max(extended, key=len)
    import difflib  # here: only a mistyped option needs it, and a `validate` starts without it

    best, score = None, 0.0
    for k in known:
        ratio = difflib.SequenceMatcher(None, norm, k).ratio()
        if k in _META and (ratio < 0.8 or abs(len(k) - len(norm)) > 2):
            continue
        if ratio >= 0.75 and ratio > score:
            best, score = k, ratio
    return best


def _meant(options: list[str]) -> str:
    quoted = [f"`{o}`" for o in options]
    return "did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line that names the wrong word and the fix."""

    def error(self, message):  # usage errors: exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(2, f"policyc: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        """Like argparse, but every argument must be known, and a misspelt option is
        reported before argparse would report what it then lacks (`--data-file x` would
        otherwise be "the following arguments are required: --data", `policyc --versoin`
        "... required: command")."""
        args = sys.argv[1:] if args is None else list(args)
        for k, arg in enumerate(itertools.takewhile(lambda a: a != "--", args)):
            if self._subparsers is not None and (not arg.startswith("-") or arg == "-"):
                self._check_command(arg, args[k + 1:])  # the command: what comes after is its own
                break
            if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-\d.*|-\.\d.*", arg):
                continue  # a value, or a negative number
            option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
            if option in self._option_string_actions:
                continue
            if option.startswith("--") and any(o.startswith(option) for o in self._option_string_actions):
                continue  # an abbreviation; argparse says when it is ambiguous
            self._unknown_argument(option)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self._unknown_argument(extras[0])
        return namespace, extras

    def _check_command(self, word: str, rest: list[str]):
        """`policyc help [COMMAND]` and `policyc version` are options here."""
        if word == "help":
            command = next((a for a in rest if a in self._subparsers._group_actions[0].choices), None)
            self.error(f"unknown command `help`; did you mean `policyc {command + ' ' if command else ''}--help`?")
        if word == "version":
            self.error("unknown command `version`; did you mean `policyc --version`?")

    def _unknown_argument(self, arg: str):
        if not arg.startswith("-"):
            self.error(f"unexpected argument `{arg}`")
        option = arg.split("=", 1)[0]
        if self._subparsers is not None:  # `policyc --data x backtest`: an option of a command, before it
            commands = self._subparsers._group_actions[0].choices
            owners = [name for name, p in commands.items() if option in p._option_string_actions]
            if owners and option not in ("-h", "--help"):
                names = owners[0] if len(owners) == 1 else ", ".join(owners[:-1]) + " and " + owners[-1]
                self.error(f"unknown option `{option}` before the command; it is an option of {names}: "
                           f"write it after the command, as in `policyc {owners[0]} {option} ...`")
        meant = [o for o in OPTION_SYNONYMS.get(option, ()) if self._offers(o)]
        if not meant:
            close = _close(option, [o for o in self._option_string_actions if o.startswith("--") or o == option])
            meant = [close] if close else []
        fix = _meant(meant) if meant else f"see `{self.prog} --help`"
        self.error(f"unknown option `{option}`; {fix}")

    def _offers(self, option: str) -> bool:
        """Whether this command has `option` (`--format json`: with that choice)."""
        name, _, value = option.partition(" ")
        action = self._option_string_actions.get(name)
        return action is not None and (not value or value in (action.choices or ()))

    def _check_value(self, action, value):  # argparse's check of `choices`, with the fix
        if action.choices is not None and value not in action.choices:
            if action.dest == "command":
                raise argparse.ArgumentError(None, _unknown("command", value, action.choices))
            raise argparse.ArgumentError(action, _unknown("value", value, action.choices))


def _unknown(what: str, word: str, known) -> str:
    """`unknown WHAT `word`; did you mean `x`?`, or the choices when none is close."""
    known = list(known)
    meant = COMMAND_SYNONYMS.get(word) if what == "command" else None
    meant = meant or _close(word, known)
    return f"unknown {what} `{word}`; {_meant([meant]) if meant else 'choose from ' + ', '.join(known)}"


class _Version(argparse.Action):
    """`--version`: policyc's version and the toolchain that enters build_hash. Versions
    come from package metadata, so Numba is not imported."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from policyc import __version__
        from policyc.compiler.hashing import COMPILER_VERSION, toolchain_versions

        # the toolchain's `policyc` entry is COMPILER_VERSION, named for what it is here
        rest = ", ".join(f"{name} {version}" for name, version in toolchain_versions().items() if name != "policyc")
        print(f"policyc {__version__}\nbuild_hash toolchain: compiler {COMPILER_VERSION}, {rest}")
        parser.exit()


class _Once(argparse.Action):
    """A repeatable option whose items are (key, value) pairs; a key given twice is a
    usage error (`-p fast=10 -p fast=11`, `--data ORCL=a.csv --data ORCL=b.csv`), never
    the last one silently winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, value = values
        items = list(getattr(namespace, self.dest, None) or [])
        for k, v in items:
            if self.dest == "params" and k == key:
                parser.error(f"argument -p/--param: `{key}` is given twice ({key}={v}, then {key}={value}); "
                             "give each param once")
            if self.dest == "data" and k is not None and k == key:
                parser.error(f"argument --data: `{key}` is given twice ({key}={v}, then {key}={value}); "
                             "give one file per instrument")
            if self.dest == "data" and k is None and key is None and _same_file(v, value):
                parser.error(f"argument --data: {value} is given twice")
        items.append(values)
        setattr(namespace, self.dest, items)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(a) == os.path.normpath(b)


def _param(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got `{text}`")
    return name.strip(), value.strip()


def _add_params(p: argparse.ArgumentParser, metavar: str = "NAME=VALUE", help: str = "override a param (repeatable)"):
    p.add_argument("-p", "--param", dest="params", action=_Once, type=_param, default=[], metavar=metavar, help=help)


def _add_format(p: argparse.ArgumentParser):
    p.add_argument("--format", choices=("text", "json"), default="text")


def build_parser() -> argparse.ArgumentParser:
    from policyc.runtime.live import DEFAULT_FSYNC, FSYNC_MODES

    parser = _Parser(prog="policyc", description="Compile, check and run trading policies.")
    parser.add_argument("--version", action=_Version,
                        help="print the versions of policyc and of the toolchain that enters build_hash, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = sub.choices  # name -> parser: errors found after parsing show that command's usage
    v = sub.add_parser("validate", help="check policy files and print their hashes")
    v.add_argument("files", nargs="+", type=_policy_files, metavar="FILE")
    _add_params(v)
    _add_format(v)
    c = sub.add_parser("compile", help="compile a policy to a Numba kernel and a manifest")
    c.add_argument("file", type=_policy_file, metavar="FILE")
    _add_params(c)
    c.add_argument("-o", "--out", default=None, type=_output_dir, metavar="DIR",
                   help="output directory (default: build/POLICY)")
    _add_format(c)
    h = sub.add_parser("hash", help="print the policy hash")
    h.add_argument("file", type=_policy_file, metavar="FILE")
    _add_params(h)
    e = sub.add_parser("explain", help="show the compiled plan")
    e.add_argument("file", type=_policy_file, metavar="FILE")
    _add_params(e)
    e.add_argument("--ir", action="store_true", help="also print the optimised IR")
    b = sub.add_parser("backtest", help="run a policy over historical data")
    b.add_argument("file", type=_policy_file, metavar="FILE")
    _add_data(b)
    _add_params(b)
    _add_account(b)
    b.add_argument("--orders", type=_output_file, metavar="FILE", help="write one CSV row per order")
    b.add_argument("--trace", type=_output_file, metavar="FILE",
                   help="write one CSV row per event: features, target, position")
    b.add_argument("--report", type=_output_file, metavar="FILE", help="write a self-contained HTML report")
    _add_format(b)
    w = sub.add_parser("sweep", help="backtest every combination of param values")
    w.add_argument("file", type=_policy_file, metavar="FILE")
    _add_data(w)
    _add_params(w, "NAME=LIST_OR_RANGE", "values: a,b,c or start:stop:step (stop included)")
    _add_account(w)
    w.add_argument("--jobs", type=_count, default=os.cpu_count() or 1, metavar="N")
    w.add_argument("--sort", default="sharpe", metavar="METRIC")
    w.add_argument("--out", type=_output_file, metavar="FILE", help="CSV of every combination, best first")
    _add_format(w)
    r = sub.add_parser("run", help="trade a policy live: feed in, orders out")
    r.add_argument("file", type=_policy_file, metavar="FILE")
    r.add_argument("--feed", required=True, action="append", type=_named_url, metavar="[NAME=]URL",
                   help="the market-data feed; NAME=URL (repeatable) serves the instruments NAME:SYMBOL")
    r.add_argument("--feed-format", action="append", type=_named_format, metavar="[NAME=]FORMAT",
                   help="native, binance or coinbase (default native; a feed named like a format uses it); "
                        "NAME=FORMAT for a named feed")
    r.add_argument("--venue", required=True, action="append", type=_named_url, metavar="[NAME=]URL",
                   help="the venue; NAME=URL (repeatable) trades the instruments NAME:SYMBOL")
    r.add_argument("--intents", type=_address, metavar="HOST:PORT",
                   help="listen for a model's intents (needs a model credential)")
    r.add_argument("--control", type=_address, metavar="HOST:PORT",
                   help="listen for operators (needs an operator or viewer credential)")
    r.add_argument("--model-token-file", "--token-file", dest="model_token_file", type=_token_file, metavar="PATH",
                   help="the model's token, for the intents port (a private file)")
    r.add_argument("--operator-token-file", type=_token_file, metavar="PATH",
                   help="an operator's token, for the control port (a private file)")
    r.add_argument("--viewer-token-file", type=_token_file, metavar="PATH",
                   help="a viewer's token: the status on the control port only (a private file)")
    r.add_argument("--credentials-file", type=_token_file, metavar="PATH",
                   help="tokens of any roles, one `ROLE TOKEN` a line (a private file)")
    r.add_argument("--totp-secret-file", type=_key_file, metavar="PATH",
                   help="the base32 TOTP secret operators' codes are checked against (resume, flatten)")
    r.add_argument("--tls-cert", type=_key_file, metavar="PATH", help="serve the listeners on wss: the certificate "
                                                                       "chain (PEM); needs --tls-key")
    r.add_argument("--tls-key", type=_key_file, metavar="PATH", help="the private key of --tls-cert (PEM)")
    r.add_argument("--ca-file", type=_key_file, metavar="PATH",
                   help="verify a wss:// feed or venue against these certificate authorities (PEM) only")
    r.add_argument("--feed-auth-file", type=_token_file, metavar="PATH",
                   help="the Authorization header value for the feed (a private file)")
    r.add_argument("--venue-auth-file", type=_token_file, metavar="PATH",
                   help="the Authorization header value for the venue (a private file)")
    r.add_argument("--log", default="decisions.jsonl", type=_output_file, metavar="PATH")
    _add_params(r)
    r.add_argument("--duration", type=_duration, metavar="DURATION",
                   help="stop after this long: seconds, or a number with s, m or h (90, 30s, 5m, 1h30m)")
    r.add_argument("--max-clock-skew", type=_duration, metavar="DURATION",
                   help="refuse a market event dated further ahead of the wall clock (default 5s)")
    r.add_argument("--max-feed-silence", type=_duration, metavar="DURATION",
                   help="without a market event for this long, intents may only reduce exposure (default 5s)")
    r.add_argument("--flatten-on-exit", action="store_true")
    r.add_argument("--busy-poll", action="store_true",
                   help="poll the sockets without sleeping: lower latency for one busy CPU core")
    r.add_argument("--fsync", choices=FSYNC_MODES, default=DEFAULT_FSYNC,
                   help=f"when the decision log reaches the disk: each record, every few ms, or when the operating "
                        f"system likes (default {DEFAULT_FSYNC})")
    r.add_argument("--log-max-bytes", type=_size, metavar="SIZE",
                   help="go on in a new numbered log file before one grows past SIZE bytes (k, M, G: 1024, 1024**2, "
                        "1024**3)")
    r.add_argument("--log-key-file", type=_key_file, metavar="PATH", help="encrypt the log with this AES-256 key")
    r.add_argument("--sign-key-file", type=_key_file, metavar="PATH",
                   help="sign the log's session record and checkpoints with this Ed25519 key")
    r.add_argument("--resume", action="store_true",
                   help="the log must exist: go on from the state its runs left (a log that exists is resumed anyway)")
    r.add_argument("--allow-policy-change", action="store_true",
                   help="resume a log written by another policy: its account and positions carry over")
    f = sub.add_parser("replay-feed", help="serve recorded data as a live WebSocket feed")
    _add_data_files(f, "CSV, Parquet or .npz, served as SYMBOL (default: the file name up to its first -)")
    f.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    f.add_argument("--tz", type=_zone, metavar="ZONE",
                   help="read timestamps without a zone in this IANA zone, e.g. Europe/Berlin, as backtest --tz and a "
                        "policy's timezone or calendar do (default: UTC); the feed sends UTC")
    pace = f.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_positive, metavar="X", help="X times the data's own clock")
    pace.add_argument("--rate", type=_positive, metavar="N", help="N events per second")
    f.add_argument("--format", choices=("native", "binance", "coinbase"), default="native")
    f.add_argument("--loop", action="store_true")
    f.add_argument("--clients", type=_count, default=1, metavar="N",
                   help="start once N clients are connected")
    _add_listener_tls(f, "serve the feed")
    v = sub.add_parser("paper-venue", help="a venue that fills market orders at the feed's last price")
    v.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    v.add_argument("--feed", required=True, type=_ws_url, metavar="URL")
    v.add_argument("--feed-format", choices=("native", "binance", "coinbase"), default="native")
    v.add_argument("--ca-file", type=_key_file, metavar="PATH",
                   help="verify a wss:// feed against these certificate authorities (PEM) only")
    _add_listener_tls(v, "serve the venue")
    v.add_argument("--latency", type=_not_negative, default=0.0, metavar="MS")
    v.add_argument("--fees-bps", type=_fees_bps, default=0.0, metavar="X")
    v.add_argument("--multiplier", action="append", type=_multiplier, default=[], metavar="INSTRUMENT=X",
                   help="the contract multiplier of an instrument, which fees are charged on (repeatable; default 1)")
    v.add_argument("--fill", type=_fill, metavar="MODEL",
                   help="same (the default): at the latest price the venue has seen; next: at the instrument's "
                        "next event; next-open: at the next bar's open; latency=DURATION: at the first event at or "
                        "after the order's decision time plus DURATION, at its open when it has one")
    p = sub.add_parser("replay", help="feed a decision log's inputs through the policy and compare its decisions")
    p.add_argument("log", type=_log_input, metavar="LOG", help="the log's first file, or its folder")
    p.add_argument("file", nargs="?", type=_policy_file, metavar="POLICY",
                   help="the policy to replay (default: the source each run's session record carries)")
    _add_params(p)
    p.add_argument("--what-if", action="store_true",
                   help="replay a policy whose hash differs from the log's and show the decisions that differ")
    p.add_argument("--show", type=_count, default=10, metavar="N", help="--what-if: show the first N differences")
    p.add_argument("--key-file", type=_key_file, metavar="PATH", help="the AES-256 key of an encrypted log")
    a = sub.add_parser("audit", help="check a decision log, or report what it shows")
    a.add_argument("action", choices=("verify", "report"), metavar="verify|report")
    a.add_argument("log", type=_log_input, metavar="LOG", help="the log's first file, or its folder")
    a.add_argument("--public-key", type=_key_file, metavar="PATH",
                   help="require every run to be signed by this Ed25519 key")
    a.add_argument("--key-file", type=_key_file, metavar="PATH", help="the AES-256 key of an encrypted log")
    a.add_argument("--html", type=_output_file, metavar="FILE", help="report: also write it as an HTML page")
    return parser


def _ws_url(text: str) -> str:
    """A ws:// or wss:// URL, checked up front: a typo would otherwise only show as a
    connection retried forever."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    from policyc.runtime.live.security import SecurityError, check_url

    try:
        check_url(text)  # a credential in the URL is refused, and not echoed
    except SecurityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        parse_uri(text)
    except InvalidURI:
        raise argparse.ArgumentTypeError(f"expected a ws:// or wss:// URL, got `{text}`") from None
    return text


def _named_url(text: str) -> tuple[str, str]:
    """`URL` (the unnamed feed or venue: name "") or `NAME=URL`."""
    name, equals, url = text.partition("=")
    if not equals or "://" in name:  # a URL's query may hold `=`; a name holds no `://`
        return "", _ws_url(text)
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected URL or NAME=URL with NAME a word such as binance, got `{text}`")
    return name, _ws_url(url)


def _named_format(text: str) -> tuple[str, str]:
    """`FORMAT` (the unnamed feed's, and a named one's default) or `NAME=FORMAT`."""
    from policyc.runtime.live.protocol import FEED_FORMATS

    name, _, fmt = text.rpartition("=")
    if fmt not in FEED_FORMATS:
        raise argparse.ArgumentTypeError(f"invalid format `{fmt}` (choose from {', '.join(FEED_FORMATS)})")
    return name, fmt


def _multiplier(text: str) -> tuple[str, float]:
    name, _, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not name or not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"expected INSTRUMENT=X with X a positive number, got `{text}`")
    return name, number


def _named(pairs: list[tuple[str, str]], option: str, parser) -> tuple[str, dict]:
    """The unnamed value of a repeatable `[NAME=]VALUE` option ("" when none) and the
    named ones; a name given twice is a usage error."""
    unnamed, named = "", {}
    for name, value in pairs:
        if (name in named) if name else unnamed:
            parser.error(f"argument {option}: {'the unnamed one' if not name else name} is given twice")
        if name:
            named[name] = value
        else:
            unnamed = value
    return unnamed, named


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got `{text}`")
    return host, int(port)


def _count(text: str) -> int:
    """The type of an option that counts something: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got `{text}`") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got `{text}`") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got `{text}`")
    return value


def _positive(text: str) -> float:
    value = _real(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _not_negative(text: str) -> float:
    value = _real(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _fees_bps(text: str) -> float:
    """`paper-venue --fees-bps`: within the bounds of the account key `fees_bps`, so the
    venue never charges a fee the runtime must refuse."""
    from policyc.dsl.risk_keys import ACCOUNT_KEYS

    value, key = _real(text), ACCOUNT_KEYS["fees_bps"]
    if not key.bounds.admit(value):
        raise argparse.ArgumentTypeError(f"must be {key.rule}, not {text}")
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


_MAX_DURATION_S = (2**63 - 1) // 10**9


def _duration(text: str) -> float:
    """Seconds: `90`, `2.5`, or numbers with a unit, `30s`, `500ms`, `5m`, `2h`, `1h30m`."""
    t = text.strip().lower().replace(" ", "")
    try:
        seconds = float(t)
    except ValueError:
        parts = _DURATION_PART.findall(t)
        if not parts or "".join(a + b for a, b in parts) != t:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 90 (seconds), 30s, 5m or 1h30m, got `{text}`") from None
        seconds = sum(float(a) * _SECONDS[b] for a, b in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"a duration must be above 0, got `{text}`")
    if seconds > _MAX_DURATION_S:  # every duration becomes int64 nanoseconds somewhere
        raise argparse.ArgumentTypeError(f"a duration must be at most {_MAX_DURATION_S:,.0f} s (292 years), "
                                         f"got `{text}`")
    return seconds


def _input_file(text: str) -> str:
    """A file the command reads; one that does not exist is a usage error."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _readable(text: str, directory_hint: str) -> str:
    """`text` names a file that exists (`_input_file`) and is not a directory (the error
    says `directory_hint`) or a device: a FIFO (`<(zcat ...)`) is fine."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got ``")
    _input_file(text)
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; {directory_hint}")
    if path.exists() and not (path.is_file() or path.is_fifo()):
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    return text


def _one_in(text: str, what: str, suffixes: tuple[str, ...]) -> str:
    """`give one WHAT in it, such as DIR/x.csv` (the first file of the directory with one
    of `suffixes`), or `give a WHAT, not a directory`."""
    try:
        first = min((p for p in Path(text).iterdir() if p.suffix.lower() in suffixes and p.is_file()), default=None)
    except OSError:
        first = None
    return f"give one {what} in it, such as {first}" if first else f"give a {what}, not a directory"


def _policy_file(text: str) -> str:
    return _readable(text, _one_in(text, "policy file", (".yaml", ".yml")))


def _policy_files(text: str) -> str:  # validate: all of a directory's policies are a glob away
    return _readable(text, f"to check every policy in it, give {os.path.join(text, '*.yaml')}")


def _token_file(text: str) -> str:
    return _readable(text, "give the file that holds the token")


def _key_file(text: str) -> str:
    """A key file that exists; what it holds is read by the command (`_check_key`)."""
    return _readable(text, "give the file that holds the key")


def _log_input(text: str) -> str:
    """A decision log's first file, or the folder that holds it."""
    return text if Path(_input_file(text)).is_dir() else _readable(text, "")


_SIZE = re.compile(r"(\d+)([kmg]?)b?")


def _size(text: str) -> int:
    """Bytes: `1048576`, or with a unit `k`, `M` or `G` (1024, 1024**2, 1024**3), at least 1."""
    m = _SIZE.fullmatch(text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 1048576, 512k or 64M, got `{text}`")
    value = int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, not {text}")
    return value


def _check_key(parser, option: str, path: str | None, read) -> None:
    """A key file named by `option` must hold its kind of key and be private."""
    from policyc.runtime.audit_chain import LogError

    if path is not None:
        try:
            read(path)
        except LogError as exc:
            parser.error(f"argument {option}: {exc}")


def _data_spec(text: str) -> tuple[str | None, str]:
    """`[SYMBOL=]PATH`. A file whose name has a `=` (`run=1.csv`, `data/a=b.csv`) is read
    as that file when it exists and `SYMBOL=PATH` names no file."""
    def hint(path: str) -> str:
        return _one_in(path, "data file", _DATA_SUFFIXES)

    if "=" in text:
        symbol, _, path = text.partition("=")
        symbol, path = symbol.strip(), path.strip()
        if "/" in symbol or os.sep in symbol or (not Path(path).exists() and Path(text).exists()):
            return None, _readable(text, hint(text))
        if not symbol or not path:
            raise argparse.ArgumentTypeError(f"expected SYMBOL=PATH or PATH, got `{text}`")
        return symbol, _readable(path, hint(path))
    return None, _readable(text, hint(text))


_DATA_SUFFIXES = (".csv", ".parquet", ".npz", ".txt", ".tsv")


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (created, with its missing parent directories), or None."""
    if path.exists():
        return None if os.access(path, os.W_OK) else "permission denied"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable"
    return None


def _output_file(text: str) -> str:
    """A file the command writes, checked before any run: missing parent directories are
    created when it is written; a directory, or a place that cannot be written, is a
    usage error now rather than a lost run later."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got ``")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file in it")
    problem = _unwritable(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {problem}")
    return text


def _output_dir(text: str) -> str:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    problem = _unwritable(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {problem}")
    return text


def _date_format(text: str) -> str:
    """A strptime format, checked for directives strptime knows, or `epoch`, `epoch-ms`,
    `epoch-us`, `epoch-ns`."""
    from datetime import datetime

    from policyc.runtime.data import EPOCH_FORMATS

    if text in EPOCH_FORMATS:
        return text
    if text.lower() in ("unix", "epoch-s", "seconds", "s", "%s", "timestamp", "posix"):  # strptime has no %s
        raise argparse.ArgumentTypeError(f"for seconds since 1970 write epoch, not `{text}` (strptime has no %s)")
    if "%" not in text:  # `dd/mm/yyyy`, as a spreadsheet writes formats
        meant = _strptime_form(text)
        fix = f"write it as {meant}" if "%" in meant else "write it like %d/%m/%Y, or epoch for seconds since 1970"
        raise argparse.ArgumentTypeError(f"`{text}` is not a strptime format; {fix}")
    try:
        datetime.strptime(datetime(2001, 2, 3, 4, 5, 6).strftime(text), text)
    except ValueError as exc:
        if "directive" in str(exc) or "stray %" in str(exc):
            raise argparse.ArgumentTypeError(f"`{text}` is not a strptime format: {exc}") from None
    return text


_SPREADSHEET = (("yyyy", "%Y"), ("yy", "%y"), ("dd", "%d"), ("hh", "%H"), ("ss", "%S"), ("mmm", "%b"))


def _strptime_form(text: str) -> str:
    """`dd/mm/yyyy` -> `%d/%m/%Y`; `mm` is minutes after `hh`, months elsewhere."""
    out, rest = "", text
    while rest:
        low = rest.lower()
        for word, directive in _SPREADSHEET:
            if low.startswith(word):
                out, rest = out + directive, rest[len(word):]
                break
        else:
            if low.startswith("mm"):
                out, rest = out + ("%M" if "%H" in out else "%m"), rest[2:]
            else:
                out, rest = out + rest[0], rest[1:]
    return out


class _Bound(int):
    """A --from/--to bound: ns since the epoch, UTC, with the text it was given as."""

    text: str


def _date_bound(end: bool):
    """The type of --from (`end` False) and --to: ns since the epoch, UTC."""
    def parse(text: str) -> int:
        from policyc.runtime.backtest import time_bound

        try:
            bound = _Bound(time_bound(text, end))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        bound.text = text.strip()
        return bound
    return parse


def _add_data_files(p: argparse.ArgumentParser, help: str):
    p.add_argument("--data", action=_Once, type=_data_spec, required=True, metavar="[SYMBOL=]PATH", help=help)
    p.add_argument("--date-format", type=_date_format, metavar="FORMAT",
                   help="read timestamps with this strptime format, e.g. %%d/%%m/%%Y, or as numbers since 1970: "
                        "epoch, epoch-ms, epoch-us, epoch-ns (default: ISO 8601)")


def _add_data(p: argparse.ArgumentParser):
    _add_data_files(p, "CSV, Parquet or .npz; one per instrument as SYMBOL=PATH")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip bad rows and report them, instead of stopping")
    p.add_argument("--from", dest="start", type=_date_bound(end=False), metavar="DATE")
    p.add_argument("--to", dest="end", type=_date_bound(end=True), metavar="DATE")
    p.add_argument("--tz", type=_zone, metavar="ZONE",
                   help="read timestamps without a zone in this IANA zone, e.g. America/New_York (default: the "
                        "policy's timezone or calendar's, else UTC)")


def _zone(text: str) -> str:
    """A --tz value: an IANA time zone name."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time zone (an IANA name such as Europe/Berlin)") from None
    return text


_FILL_NAMES = ("next-open", "next", "same")


def _fill(text: str) -> tuple[str, int]:
    """A --fill value: `next-open`, `next`, `same` or `latency=DURATION` (`50ms`, `2s`, as
    a policy writes a duration) -> (fill mode name, latency in ns)."""
    from decimal import Decimal

    from policyc.dsl.expressions import DURATION_SECONDS

    t = text.strip()
    if t in _FILL_NAMES:
        return t, 0
    m = re.fullmatch(r"latency=(-?)(\d+(?:\.\d+)?)(ms|s|m|h|d)", t)
    if m is None:
        raise argparse.ArgumentTypeError(_unknown("value", t, (*_FILL_NAMES, "latency=50ms")))
    sign, amount, unit = m.groups()
    if sign:
        raise argparse.ArgumentTypeError(f"latency must not be negative: {t} (an order cannot fill before "
                                         "its decision)")
    ns = Decimal(amount) * Decimal(str(DURATION_SECONDS[unit])) * 10**9
    if ns >= 2**62:
        raise argparse.ArgumentTypeError(f"latency {amount}{unit} is too long")
    return "latency", int(ns.to_integral_value())


def _add_account(p: argparse.ArgumentParser):
    p.add_argument("--fill", type=_fill, metavar="MODEL",
                   help="next-open: at the next bar's open (the default when the data has `open`); next: at the "
                        "next event's price (the default otherwise); same: at this event's price; "
                        "latency=DURATION: at the first event at or after the decision plus DURATION")
    p.add_argument("--fees-bps", type=float, metavar="X")
    p.add_argument("--slippage-bps", type=float, metavar="X")
    p.add_argument("--initial-equity", type=float, metavar="X")


def _account_overrides(args) -> dict:
    """The account options given, checked against the bounds of their account keys."""
    from policyc.dsl.risk_keys import ACCOUNT_KEYS

    out = {}
    for key, value in (("fees_bps", args.fees_bps), ("slippage_bps", args.slippage_bps),
                       ("initial_equity", args.initial_equity)):
        if value is not None:
            if not ACCOUNT_KEYS[key].bounds.admit(value):
                raise _UsageError(f"--{key.replace('_', '-')} must be {ACCOUNT_KEYS[key].rule}, not {value:g}")
            out[key] = value
    return out


def _check_run_options(args, parser, outputs: tuple[str, ...]):
    """What can be checked of a backtest or sweep before compiling and loading: the date
    range, and output files that would overwrite each other or an input."""
    if args.start is not None and args.end is not None and args.start > args.end:
        parser.error(f"--from {args.start.text} is after --to {args.end.text}; swap them")
    inputs = [("the policy file", args.file)] + [("a --data file", path) for _, path in args.data]
    seen: list[tuple[str, str]] = []
    for option in outputs:
        path = getattr(args, option.lstrip("-").replace("-", "_"))
        if not path:
            continue
        for what, other in inputs:
            if _same_file(path, other):
                parser.error(f"argument {option}: {path} is {what}; writing it would overwrite it")
        for other_option, other in seen:
            if _same_file(path, other):
                parser.error(f"{other_option} and {option} name the same file: {path}")
        seen.append((option, path))


def _write(path: str, write) -> None:
    """`write(path)`, with the missing parent directories of `path` created first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(path)


class _UsageError(Exception):
    pass


def _data_error_json(exc) -> str:
    """A data error as --format json prints it: an array of one object with the keys of a
    diagnostic; `code` and the columns are null, `line` is the CSV line or null."""
    return json.dumps([{"file": exc.file, "line": exc.line, "column": None, "end_line": None, "end_column": None,
                        "severity": "error", "code": None, "message": exc.detail, "help": None}], indent=2)


def _say(message: str) -> None:
    """A progress line for the person waiting (a first compile): stderr, so stdout
    stays the command's result (`compile --format json`)."""
    print(message, file=sys.stderr, flush=True)


def _print_diagnostics(diags: list[Diagnostic], fmt: str, out=None):
    out = out or sys.stderr
    if fmt == "json":
        return
    cache: dict[str, list[str] | None] = {}
    for d in sorted(diags, key=sort_key):
        if d.span.file not in cache:
            cache[d.span.file] = _source_lines(d.span.file)
        print(render_text(d, cache[d.span.file]), file=out)


def _source_lines(name: str) -> list[str] | None:
    try:
        path = Path(name)
        if path.is_file() and path.stat().st_size <= 1_000_000:
            return path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        pass
    return None


def cmd_validate(args, parser) -> int:
    from policyc.compiler.frontend import diagnose

    overrides = dict(args.params)
    all_diags, failed, lines = [], False, []
    for f in args.files:
        result, diags = diagnose(f, overrides)
        all_diags += diags
        if result is None:
            failed = True
        else:
            lines.append(f"ok {f} {result.policy_hash}")
    if args.format == "json":
        print(render_json(sorted(all_diags, key=sort_key)))
    else:
        _print_diagnostics(all_diags, "text")
        for line in lines:
            print(line)
    return 1 if failed else 0


def _checked_or_exit(args):
    from policyc.compiler.frontend import diagnose

    result, diags = diagnose(args.file, dict(args.params))
    fmt = getattr(args, "format", "text")
    if result is None:
        if fmt == "json":
            print(render_json(sorted(diags, key=sort_key)))
        else:
            _print_diagnostics(diags, "text")
        return None
    _print_diagnostics(diags, "text")
    return result


def cmd_hash(args, parser) -> int:
    result = _checked_or_exit(args)
    if result is None:
        return 1
    print(result.policy_hash)
    return 0


def cmd_compile(args, parser) -> int:
    from policyc.compiler.build import compile_checked, write_artifact

    result = _checked_or_exit(args)
    if result is None:
        return 1
    compiled = compile_checked(result, on_compile=_say)
    out = Path(args.out or Path("build") / compiled.name)
    manifest = write_artifact(compiled, out)
    if args.format == "json":
        print(json.dumps(manifest, indent=2))
    else:
        print(f"policy_hash {compiled.policy_hash}")
        print(f"build_hash  {compiled.build_hash}")
        print(f"wrote {out / 'manifest.json'} and {out / 'kernel.py'}")
    return 0


def cmd_explain(args, parser) -> int:
    from policyc.compiler.explain import explain

    result = _checked_or_exit(args)
    if result is None:
        return 1
    print(explain(result, show_ir=args.ir))
    return 0


def cmd_backtest(args, parser) -> int:
    from policyc.runtime.backtest import (fill_mode, format_summary, load_events, run_backtest, skipped_rows_warnings,
                                          summary, write_orders, write_trace)
    from policyc.runtime.data import DataError

    from policyc.compiler.build import compile_checked

    _check_run_options(args, parser, ("--orders", "--trace", "--report"))
    try:
        account = _account_overrides(args)
    except _UsageError as exc:
        parser.error(str(exc))
    result = _checked_or_exit(args)
    if result is None:
        return 1

    def fail(exc: DataError) -> int:  # data problems: one `error:` line, or JSON as diagnostics are
        if args.format == "json":
            print(_data_error_json(exc))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1

    compiled = compile_checked(result, on_compile=_say)
    name, latency_ns = args.fill or (None, 0)
    try:
        events, tables = load_events(compiled, args.data, args.skip_bad_rows, args.start, args.end, args.date_format,
                                     bars=name in (None, "next-open", "latency"), zone=args.tz)
        mode = fill_mode(name, events)
    except DataError as exc:
        return fail(exc)
    bt = run_backtest(compiled, events, mode, account, trace=bool(args.trace), record_equity=bool(args.report),
                      latency_ns=latency_ns)
    bt.data_files = [t.path for t in tables]
    for t in tables:
        for kind, count in t.skipped.items():
            bt.skipped[kind] = bt.skipped.get(kind, 0) + count
    for line in skipped_rows_warnings(tables):
        print(line, file=sys.stderr)
    writers = {"orders": lambda path: write_orders(bt, path), "trace": lambda path: write_trace(bt, path)}
    if args.report:
        from policyc.runtime.report import write_report

        writers["report"] = lambda path: write_report(bt, path)
    for label in ("orders", "trace", "report"):
        path = getattr(args, label)
        if path:
            try:
                _write(path, writers[label])
            except OSError as exc:
                return fail(DataError(f"cannot write {path}: {exc.strerror or exc}", path, None,
                                      f"cannot write --{label} {path}: {exc.strerror or exc}"))
    s = summary(bt)
    if args.format == "json":
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
        for label in ("orders", "trace", "report"):
            if getattr(args, label):
                print(f"wrote {label}: {getattr(args, label)}")
    return 0


def cmd_sweep(args, parser) -> int:
    from policyc.runtime.data import DataError
    from policyc.runtime.sweep import format_sweep, parse_grid, run_sweep, sweep_json, write_sweep

    from policyc.runtime.sweep import LOWER_IS_BETTER, METRICS

    _check_run_options(args, parser, ("--out",))
    try:
        grid = parse_grid(args.params)
        account = _account_overrides(args)
    except (ValueError, _UsageError) as exc:
        parser.error(str(exc))
    if args.sort not in METRICS:
        parser.error(f"argument --sort: {_unknown('value', args.sort, METRICS)}")
    args.params = []
    base = _checked_or_exit(args)
    if base is None:
        return 1
    try:
        rows = run_sweep(args.file, grid, args.data, account, args, jobs=args.jobs)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, "text")
        return 1
    sign = 1.0 if args.sort in LOWER_IS_BETTER else -1.0
    rows.sort(key=lambda r: (r[args.sort] is None, sign * (r[args.sort] or 0.0)))
    if args.out:
        _write(args.out, lambda path: write_sweep(rows, path))
    elif args.format == "json":
        print(sweep_json(rows))
    else:
        print(format_sweep(rows))
    return 0


def cmd_run(args, parser) -> int:
    import asyncio

    from policyc.runtime.audit_chain import LogError
    from policyc.runtime.live import eventloop, view
    from policyc.runtime.live.audit import read_log_key, read_signing_key
    from policyc.runtime.live.protocol import encode_indented
    from policyc.runtime.live.runner import ConfigError, LiveRuntime, LogFailed, RunConfig

    from policyc.compiler.build import compile_checked

    settings = _run_security(args, parser)
    if _same_file(args.log, args.file):
        parser.error(f"argument --log: {args.log} is the policy file; writing it would overwrite it")
    _check_key(parser, "--log-key-file", args.log_key_file, read_log_key)
    _check_key(parser, "--sign-key-file", args.sign_key_file, read_signing_key)
    result = _checked_or_exit(args)
    if result is None:
        return 1
    limits = {key: value for key, value in (("max_clock_skew", args.max_clock_skew),
                                            ("max_feed_silence", args.max_feed_silence)) if value is not None}
    feed_url, feeds = _named(args.feed, "--feed", parser)
    venue_url, venues = _named(args.venue, "--venue", parser)
    feed_format, feed_formats = _named(args.feed_format or [], "--feed-format", parser)
    try:
        runtime = LiveRuntime(compile_checked(result, on_compile=_say), RunConfig(
            feed_url=feed_url, venue_url=venue_url, feed_format=feed_format or "native", feeds=feeds, venues=venues,
            feed_formats=feed_formats, intents=args.intents,
            control=args.control, log_path=args.log, duration=args.duration,
            flatten_on_exit=args.flatten_on_exit, busy_poll=args.busy_poll, fsync=args.fsync,
            log_max_bytes=args.log_max_bytes, log_key_file=args.log_key_file, sign_key_file=args.sign_key_file,
            resume=args.resume, allow_policy_change=args.allow_policy_change, **settings, **limits))
    except LogError as exc:  # a log that cannot be continued
        parser.error(f"argument --log: {exc}")
    except ConfigError as exc:  # an instrument no feed or venue serves
        parser.error(str(exc))
    except LogFailed as exc:  # its first records could not be written
        print(f"error: decision log {args.log}: {exc.strerror}; the run did not start", file=sys.stderr)
        return 1
    if runtime.restored is not None:
        held = {name: qty for name, qty in runtime.engine.positions().items() if qty}
        print(f"resuming {args.log}: {runtime.restored.runs:,} earlier run{'s' * (runtime.restored.runs != 1)} "
              f"replayed; positions {held or 'flat'}, {len(runtime.open):,} open order"
              f"{'s' * (len(runtime.open) != 1)}, kill switch {'on' if runtime.engine.halted else 'off'}; "
              "trading once the venue's positions match", file=sys.stderr)
    async def run_and_watch() -> dict:
        run = asyncio.ensure_future(runtime.run())
        await view.watch(runtime, run)
        return await run

    failed = None
    try:
        status = eventloop.run(run_and_watch())
    except LogFailed as exc:  # the run stopped on it: its status and its log still say where it stopped
        status, failed = exc.status, exc
    status.pop("recent")
    print(encode_indented(status))
    print(f"decision log: {args.log}")
    if failed is not None:
        print(f"error: decision log {args.log}: {failed.strerror}; the run stopped", file=sys.stderr)
        return 1
    return 0


def _run_security(args, parser) -> dict:
    """The RunConfig fields of `run`'s security options (docs/security.md): the listeners'
    credentials and second factor, TLS, and the feed's and venue's Authorization. A
    secret that cannot be used (open to others, weak, given twice) is a usage error whose
    message names the file or variable, never the secret."""
    from policyc.runtime.live import security

    try:
        credentials = security.load_credentials(
            {"model": args.model_token_file, "operator": args.operator_token_file,
             "viewer": args.viewer_token_file}, args.credentials_file, os.environ)
        totp = (security.TotpVerifier(security.read_totp_secret(args.totp_secret_file))
                if args.totp_secret_file else None)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise security.SecurityError("--tls-cert and --tls-key go together: the listeners' certificate and "
                                         "its private key")
        if args.tls_cert:
            security.server_context(args.tls_cert, args.tls_key)
        if args.ca_file:
            security.client_context(args.ca_file)
        feed_auth = security.read_client_authorization(args.feed_auth_file, "POLICYC_FEED_AUTHORIZATION", os.environ)
        venue_auth = security.read_client_authorization(args.venue_auth_file, "POLICYC_VENUE_AUTHORIZATION",
                                                        os.environ)
    except security.SecurityError as exc:
        parser.error(str(exc))
    roles = credentials.roles()
    if args.intents and "model" not in roles:
        parser.error("--intents needs a model credential: --model-token-file, --credentials-file or "
                     "POLICYC_MODEL_TOKEN")
    if args.control and not roles & {"operator", "viewer"}:
        parser.error("--control needs an operator or viewer credential: --operator-token-file, "
                     "--viewer-token-file, --credentials-file or POLICYC_OPERATOR_TOKEN")
    return {"guard": security.Guard(credentials, totp), "tls_cert": args.tls_cert, "tls_key": args.tls_key,
            "ca_file": args.ca_file,
            "feed_headers": (("Authorization", feed_auth),) if feed_auth else (),
            "venue_headers": (("Authorization", venue_auth),) if venue_auth else ()}


def _add_listener_tls(sub, what: str) -> None:
    """`--tls-cert` and `--tls-key` of `replay-feed` and `paper-venue`, as `run`'s."""
    sub.add_argument("--tls-cert", type=_key_file, metavar="PATH",
                     help=f"{what} on wss: the certificate chain (PEM); needs --tls-key")
    sub.add_argument("--tls-key", type=_key_file, metavar="PATH", help="the private key of --tls-cert (PEM)")


def _listener_tls(args, parser):
    """The server TLS context of `--tls-cert` and `--tls-key` (None without them); a
    pair that cannot be used is a usage error, with `run`'s messages."""
    from policyc.runtime.live import security

    try:
        if (args.tls_cert is None) != (args.tls_key is None):
            raise security.SecurityError("--tls-cert and --tls-key go together: the listener's certificate and "
                                         "its private key")
        return security.server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except security.SecurityError as exc:
        parser.error(str(exc))


def cmd_replay_feed(args, parser) -> int:
    from policyc.runtime.data import DataError
    from policyc.runtime.live import eventloop
    from policyc.runtime.live.replay import duplicate_names, load_recording, serve

    clash = duplicate_names(args.data)
    if clash:
        parser.error(f"argument --data: {clash}")
    tls = _listener_tls(args, parser)
    try:
        rec = load_recording(args.data, args.date_format, zone=args.tz)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    host, port = args.listen
    print(f"replaying {len(rec):,} events of {', '.join(rec.instruments)} on {'wss' if tls else 'ws'}://{host}:{port}",
          file=sys.stderr)
    sent = eventloop.run(eventloop.until_signal(
        lambda stop: serve(rec, host, port, args.format, args.speed, args.rate, args.loop, args.clients, stop=stop,
                           tls=tls)))
    print(f"sent {sent:,} events", file=sys.stderr)
    return 0


def cmd_paper_venue(args, parser) -> int:
    from policyc.runtime.live import eventloop
    from policyc.runtime.live.paper import PaperVenue, serve

    from policyc.runtime.live.security import SecurityError, client_context

    if args.ca_file:
        try:
            client_context(args.ca_file)
        except SecurityError as exc:
            parser.error(f"argument --ca-file: {exc}")
    tls = _listener_tls(args, parser)
    from policyc.compiler import layout as L

    twice = sorted({name for name, _ in args.multiplier if [n for n, _ in args.multiplier].count(name) > 1})
    if twice:
        parser.error(f"argument --multiplier: {', '.join(twice)} given more than once")
    mode, latency_ns = args.fill or ("same", 0)
    venue = PaperVenue(fees_bps=args.fees_bps, latency_ms=args.latency, feed_format=args.feed_format,
                       fill_mode=L.FILL_MODES[mode], fill_latency_ns=latency_ns, multipliers=dict(args.multiplier))
    host, port = args.listen
    eventloop.run(eventloop.until_signal(lambda stop: serve(venue, host, port, args.feed, stop=stop,
                                                            ca_file=args.ca_file, tls=tls,
                                                            warn=lambda m: print(m, file=sys.stderr, flush=True))))
    print(json.dumps({"fills": len(venue.fills), "latency": venue.percentiles(), "bad_feed_messages": venue.bad_feed}),
          file=sys.stderr)
    return 0


def cmd_audit(args, parser) -> int:
    """`audit verify`: OK and what was checked on stdout, exit 0; or the first bad record
    on stdout, exit 1; a log or key that cannot be checked is a usage error, exit 2.
    `audit report`: the log verified first (a log that does not verify gets no report,
    exit 1), then the report on stdout and, with --html, as a page."""
    from policyc.runtime.audit_chain import LogError
    from policyc.runtime.live.audit import read_log_key, read_public_key, verify_log

    _check_key(parser, "--public-key", args.public_key, read_public_key)
    _check_key(parser, "--key-file", args.key_file, read_log_key)
    if args.html and args.action != "report":
        parser.error("--html is an option of `audit report`")
    try:
        files, summary, problem = verify_log(args.log, args.public_key, args.key_file)
    except LogError as exc:
        parser.error(str(exc))
    if problem is not None:
        seq = "" if problem.seq is None else f" (seq {problem.seq})"
        print(f"BAD {problem.file} line {problem.line}{seq}: {problem.kind}: {problem.detail}")
        return 1
    if args.action == "report":
        return _audit_report(args, files[0])
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in summary.kinds.most_common())
    print(f"OK {files[0]}: {summary.records:,} records in {summary.runs:,} run{'s' * (summary.runs != 1)}, "
          f"{len(files):,} file{'s' * (len(files) != 1)} ({kinds})")
    print(f"chain head: {summary.head}")
    if summary.signatures_checked:
        print(f"signatures: {summary.signatures_checked:,} verified with --public-key; the log ends with its "
              "closing checkpoint")
    elif summary.signatures_unchecked:
        print(f"signatures: {summary.signatures_unchecked:,}, not verified: give --public-key")
    else:
        print("signatures: none (records cut off the end of an unsigned log would not show)")
    print(f"encrypted: {summary.encrypted_runs:,} of {summary.runs:,} runs" if summary.encrypted_runs else
          "encrypted: no")
    return 0


def cmd_replay(args, parser) -> int:
    """The log verified (one that does not is refused, exit 1, as `audit verify` says
    why), then its inputs fed through the policy: OK and the counts, exit 0; or the first
    decision that differs, both sides, exit 1. With --what-if, every difference is
    counted and the first --show printed, exit 0. A log, key or policy that cannot be
    used is a usage error, exit 2."""
    from policyc.compiler.build import compile_checked
    from policyc.runtime.audit_chain import LogError
    from policyc.runtime.journal import ReplayError, replay, session_policy
    from policyc.runtime.live.audit import read_log, read_log_key, verify_log

    _check_key(parser, "--key-file", args.key_file, read_log_key)
    if args.params and not args.file:
        parser.error("-p/--param binds a param of POLICY: give the policy file")
    try:
        files, _, problem = verify_log(args.log, None, args.key_file)
        if problem is None:
            records = read_log(files[0], read_log_key(args.key_file) if args.key_file else None)
    except (LogError, ValueError) as exc:
        parser.error(str(exc).splitlines()[0])
    if problem is not None:
        seq = "" if problem.seq is None else f" (seq {problem.seq})"
        print(f"BAD {problem.file} line {problem.line}{seq}: {problem.kind}: {problem.detail}; not replayed")
        return 1
    sessions = [r for r in records if r.get("kind") == "session"]
    if not sessions:
        parser.error(f"{files[0]} holds no run to replay")
    policy_for = session_policy
    if args.file:
        result = _checked_or_exit(args)
        if result is None:
            return 1
        differ = [s for s in sessions if s.get("policy_hash") != result.policy_hash]
        if differ and not args.what_if:
            parser.error(f"policy hash {result.policy_hash} of {args.file} differs from the log's "
                         f"{differ[0].get('policy_hash')} (run at seq {differ[0].get('seq')}): refused; --what-if "
                         "replays it anyway")
        policy = compile_checked(result, on_compile=_say)
        policy_for = lambda record: policy  # noqa: E731
    elif args.what_if:
        parser.error("--what-if replays another policy: give its file")
    try:
        replayer, found = replay(records, policy_for, stop_at_first=not args.what_if)
    except ReplayError as exc:
        parser.error(str(exc))
    runs = f"{replayer.runs:,} run{'s' * (replayer.runs != 1)}"
    tail = (f"; its last run stopped before writing the last {len(replayer.pending):,} record"
            f"{'s' * (len(replayer.pending) != 1)} of its last input (written when it was resumed)"
            if replayer.pending else "")
    if args.what_if:
        print(f"what-if {args.file} ({policy.policy_hash[:12]}) over {files[0]}: {len(found):,} decision"
              f"{'s' * (len(found) != 1)} differ, {replayer.outputs:,} equal, {replayer.inputs:,} inputs in {runs}")
        for d in found[:args.show]:
            print(f"seq {d.seq}:\n  logged:   {_compact(d.logged)}\n  what-if:  {_compact(d.replayed)}")
        return 0
    if found:
        d = found[0]
        print(f"DIVERGED at seq {d.seq} (run {d.run}):\n  logged:   {_compact(d.logged)}\n"
              f"  replayed: {_compact(d.replayed)}")
        return 1
    print(f"OK {files[0]}: {replayer.inputs:,} inputs in {runs} replayed, {replayer.outputs:,} decision records equal "
          f"to the logged ones bit for bit{tail}")
    return 0


def _compact(record: dict | None) -> str:
    return "(none)" if record is None else json.dumps(record, separators=(",", ":"))


def _audit_report(args, first_file) -> int:
    from policyc.runtime.audit_report import build_report, render_html, render_text
    from policyc.runtime.live.audit import read_log, read_log_key

    records = read_log(first_file, read_log_key(args.key_file) if args.key_file else None)
    sessions = [r for r in records if r.get("kind") == "session"]
    limits = sessions[-1].get("risk") or {} if sessions else {}
    report = build_report(records, limits)
    print(render_text(report), end="")
    if args.html:
        page = render_html(report, f"Audit report: {first_file}")
        _write(args.html, lambda path: Path(path).write_text(page, encoding="utf-8"))
        print(f"wrote {args.html}")
    return 0


COMMANDS = {"validate": cmd_validate, "hash": cmd_hash, "compile": cmd_compile, "explain": cmd_explain,
            "backtest": cmd_backtest, "sweep": cmd_sweep, "run": cmd_run, "replay-feed": cmd_replay_feed,
            "paper-venue": cmd_paper_venue, "replay": cmd_replay, "audit": cmd_audit}


# Commands that stay up, or whose work makes Python objects in proportion to their input:
# the cyclic garbage collector runs for them as usual.
COLLECTING = ("sweep", "run", "replay-feed", "paper-venue", "replay", "audit")


def main(argv: list[str] | None = None) -> int:
    """Run one command line (`argv`, default `sys.argv[1:]`); returns the exit status.

    Called without `argv`, as the `policyc` program, the process is policyc's own. Then,
    except for the COLLECTING commands, the cyclic garbage collector is off: a short
    command's start-up makes hundreds of thousands of objects (Numba's among them) and
    no garbage cycles worth a pass over them. And at the end every object alive is
    frozen, so the interpreter's exit does not walk them once more before the operating
    system frees the memory. A kernel compile sets Numba's CPU target up without
    scipy.linalg (`compiler.jit.load_machine_code_first`)."""
    own_process = argv is None
    if own_process:
        gc.disable()
        jit.OWN_PROCESS = True
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        if not argv:  # `policyc` alone: what it can do, and a usage error for scripts
            parser.print_help(sys.stderr)
            return 2
        args = parser.parse_args(argv)
        if own_process and args.command in COLLECTING:
            gc.enable()
        return COMMANDS[args.command](args, parser.commands[args.command])
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, "text")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # an output file that cannot be written, a full disk
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except Exception as exc:  # a defect in policyc itself: say so plainly, no traceback
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "this is a bug in policyc; please report it with the policy file and command", file=sys.stderr)
        return 3
    finally:
        if own_process:
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
