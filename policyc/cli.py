"""`policyc`: the command line. Exit 0 on success, 1 on diagnostics and data problems,
2 on usage errors, 3 on an internal error.

No Python traceback ever reaches the user: policy problems are diagnostics; data problems
are one `error:` line naming the file, line and value; usage problems are the command's
usage and one `policyc: error:` line naming the word at fault and, when one is close, the
word meant (a command, an option, a choice, a sweep range). A file the command line names
that does not exist is a usage error, for every option that reads one. Anything
unexpected is reported as an internal error.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

from policyc.dsl.diagnostics import Diagnostic, PolicyError, did_you_mean, render_json, render_text, sort_key


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line that names the wrong word and the fix."""

    def error(self, message):  # usage errors: exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(2, f"policyc: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        """Like argparse, but every argument must be known, and a misspelt option of a
        command is reported before argparse would report what it then lacks (`--data-file
        x` would otherwise be "the following arguments are required: --data")."""
        args = sys.argv[1:] if args is None else list(args)
        if self._subparsers is None:  # a command's parser: no later parser knows more options
            for arg in itertools.takewhile(lambda a: a != "--", args):
                option = arg.split("=", 1)[0]
                if option.startswith("--") and not any(o.startswith(option) for o in self._option_string_actions):
                    self._unknown_argument(option)  # not even an abbreviation of an option
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self._unknown_argument(extras[0])
        return namespace, extras

    def _unknown_argument(self, arg: str):
        if not arg.startswith("-"):
            self.error(f"unexpected argument `{arg}`")
        option = arg.split("=", 1)[0]
        fix = did_you_mean(option, self._option_string_actions) or f"see `{self.prog} --help`"
        self.error(f"unknown option `{option}`; {fix}")

    def _check_value(self, action, value):  # argparse's check of `choices`, with the fix
        if action.choices is not None and value not in action.choices:
            if action.dest == "command":
                raise argparse.ArgumentError(None, _unknown("command", value, action.choices))
            raise argparse.ArgumentError(action, _unknown("value", value, action.choices))


def _unknown(what: str, word: str, known) -> str:
    """`unknown WHAT `word`; did you mean `x`?`, or the choices when none is close."""
    known = list(known)
    return f"unknown {what} `{word}`; {did_you_mean(word, known) or 'choose from ' + ', '.join(known)}"


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


def _param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got `{text}`")
    name, _, value = text.partition("=")
    return name.strip(), value.strip()


def _add_params(p: argparse.ArgumentParser):
    p.add_argument("-p", "--param", dest="params", action="append", type=_param, default=[],
                   metavar="NAME=VALUE", help="override a param (repeatable)")


def _add_format(p: argparse.ArgumentParser):
    p.add_argument("--format", choices=("text", "json"), default="text")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="policyc", description="Compile, check and run trading policies.")
    parser.add_argument("--version", action=_Version,
                        help="print the versions of policyc and of the toolchain that enters build_hash, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = sub.choices  # name -> parser: errors found after parsing show that command's usage
    v = sub.add_parser("validate", help="check policy files and print their hashes")
    v.add_argument("files", nargs="+", type=_input_file, metavar="FILE")
    _add_params(v)
    _add_format(v)
    c = sub.add_parser("compile", help="compile a policy to a Numba kernel and a manifest")
    c.add_argument("file", type=_input_file, metavar="FILE")
    _add_params(c)
    c.add_argument("-o", "--out", default=None, metavar="DIR", help="output directory (default: build/POLICY)")
    _add_format(c)
    h = sub.add_parser("hash", help="print the policy hash")
    h.add_argument("file", type=_input_file, metavar="FILE")
    _add_params(h)
    e = sub.add_parser("explain", help="show the compiled plan")
    e.add_argument("file", type=_input_file, metavar="FILE")
    _add_params(e)
    e.add_argument("--ir", action="store_true", help="also print the optimised IR")
    b = sub.add_parser("backtest", help="run a policy over historical data")
    b.add_argument("file", type=_input_file, metavar="FILE")
    _add_data(b)
    _add_params(b)
    _add_account(b)
    b.add_argument("--orders", metavar="FILE", help="write one CSV row per order")
    b.add_argument("--trace", metavar="FILE", help="write one CSV row per event: features, target, position")
    b.add_argument("--report", metavar="FILE", help="write a self-contained HTML report")
    _add_format(b)
    w = sub.add_parser("sweep", help="backtest every combination of param values")
    w.add_argument("file", type=_input_file, metavar="FILE")
    _add_data(w)
    w.add_argument("-p", "--param", dest="params", action="append", type=_param, default=[],
                   metavar="NAME=LIST_OR_RANGE", help="values: a,b,c or start:stop:step (stop included)")
    _add_account(w)
    w.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N")
    w.add_argument("--sort", default="sharpe", metavar="METRIC")
    w.add_argument("--out", metavar="FILE", help="CSV of every combination, best first")
    r = sub.add_parser("run", help="trade a policy live: feed in, orders out")
    r.add_argument("file", type=_input_file, metavar="FILE")
    r.add_argument("--feed", required=True, type=_ws_url, metavar="URL")
    r.add_argument("--feed-format", choices=("native", "binance", "coinbase"), default="native")
    r.add_argument("--venue", required=True, type=_ws_url, metavar="URL")
    r.add_argument("--intents", type=_address, metavar="HOST:PORT")
    r.add_argument("--control", type=_address, metavar="HOST:PORT")
    r.add_argument("--token-file", type=_input_file, metavar="PATH")
    r.add_argument("--log", default="decisions.jsonl", metavar="PATH")
    _add_params(r)
    r.add_argument("--duration", type=float, metavar="SECONDS")
    r.add_argument("--flatten-on-exit", action="store_true")
    r.add_argument("--busy-poll", action="store_true",
                   help="poll the sockets without sleeping: lower latency for one busy CPU core")
    f = sub.add_parser("replay-feed", help="serve recorded data as a live WebSocket feed")
    _add_data_files(f, "CSV, Parquet or .npz, served as SYMBOL (default: the file name up to its first -)")
    f.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    pace = f.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, metavar="X", help="X times the data's own clock")
    pace.add_argument("--rate", type=float, metavar="N", help="N events per second")
    f.add_argument("--format", choices=("native", "binance", "coinbase"), default="native")
    f.add_argument("--loop", action="store_true")
    f.add_argument("--clients", type=int, default=1, metavar="N", help="start once N clients are connected")
    v = sub.add_parser("paper-venue", help="a venue that fills market orders at the feed's last price")
    v.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    v.add_argument("--feed", required=True, type=_ws_url, metavar="URL")
    v.add_argument("--feed-format", choices=("native", "binance", "coinbase"), default="native")
    v.add_argument("--latency", type=float, default=0.0, metavar="MS")
    v.add_argument("--fees-bps", type=float, default=0.0, metavar="X")
    return parser


def _ws_url(text: str) -> str:
    """A ws:// or wss:// URL, checked up front: a typo would otherwise only show as a
    connection retried forever."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    try:
        parse_uri(text)
    except InvalidURI:
        raise argparse.ArgumentTypeError(f"expected a ws:// or wss:// URL, got `{text}`") from None
    return text


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got `{text}`")
    return host, int(port)


def _input_file(text: str) -> str:
    """A file the command reads; one that does not exist is a usage error."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _data_spec(text: str) -> tuple[str | None, str]:
    if "=" in text:
        symbol, _, path = text.partition("=")
        return symbol.strip(), _input_file(path.strip())
    return None, _input_file(text)


def _date_format(text: str) -> str:
    if "%" not in text:  # `dd/mm/yyyy`, as a spreadsheet writes formats
        raise argparse.ArgumentTypeError(f"`{text}` is not a strptime format; write it like %d/%m/%Y")
    return text


def _date_bound(end: bool):
    """The type of --from (`end` False) and --to: ns since the epoch, UTC."""
    def parse(text: str) -> int:
        from policyc.runtime.backtest import time_bound

        try:
            return time_bound(text, end)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _add_data_files(p: argparse.ArgumentParser, help: str):
    p.add_argument("--data", action="append", type=_data_spec, required=True, metavar="[SYMBOL=]PATH", help=help)
    p.add_argument("--date-format", type=_date_format, metavar="FORMAT",
                   help="read text timestamps with this strptime format, e.g. %%d/%%m/%%Y (default: ISO 8601)")


def _add_data(p: argparse.ArgumentParser):
    _add_data_files(p, "CSV, Parquet or .npz; one per instrument as SYMBOL=PATH")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip bad rows and report them, instead of stopping")
    p.add_argument("--from", dest="start", type=_date_bound(end=False), metavar="DATE")
    p.add_argument("--to", dest="end", type=_date_bound(end=True), metavar="DATE")


def _add_account(p: argparse.ArgumentParser):
    p.add_argument("--fill", choices=("next", "same"), default="next",
                   help="fill at the next event's price (default) or this event's")
    p.add_argument("--fees-bps", type=float, metavar="X")
    p.add_argument("--slippage-bps", type=float, metavar="X")
    p.add_argument("--initial-equity", type=float, metavar="X")


def _account_overrides(args) -> dict:
    out = {}
    for key, value in (("fees_bps", args.fees_bps), ("slippage_bps", args.slippage_bps),
                       ("initial_equity", args.initial_equity)):
        if value is not None:
            if not math.isfinite(value) or value < 0 or (key == "initial_equity" and value <= 0):
                raise _UsageError(f"--{key.replace('_', '-')} must be a number {'above' if key == 'initial_equity' else 'of at least'} 0")
            out[key] = value
    return out


class _UsageError(Exception):
    pass


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
    from policyc.runtime.backtest import (format_summary, load_events, run_backtest, skipped_rows_warnings, summary,
                                  write_orders, write_trace)
    from policyc.runtime.data import DataError

    from policyc.compiler.build import compile_checked
    from policyc.compiler.layout import FILL_MODES

    result = _checked_or_exit(args)
    if result is None:
        return 1
    try:
        account = _account_overrides(args)
    except _UsageError as exc:
        parser.error(str(exc))
    compiled = compile_checked(result, on_compile=_say)
    try:
        events, tables = load_events(compiled, args.data, args.skip_bad_rows, args.start, args.end, args.date_format)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bt = run_backtest(compiled, events, FILL_MODES[args.fill], account, trace=bool(args.trace))
    bt.data_files = [t.path for t in tables]
    for t in tables:
        for kind, count in t.skipped.items():
            bt.skipped[kind] = bt.skipped.get(kind, 0) + count
    for line in skipped_rows_warnings(tables):
        print(line, file=sys.stderr)
    if args.orders:
        write_orders(bt, args.orders)
    if args.trace:
        write_trace(bt, args.trace)
    if args.report:
        from policyc.runtime.report import write_report

        write_report(bt, args.report)
    s = summary(bt)
    if args.format == "json":
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
        for label, path in (("orders", args.orders), ("trace", args.trace), ("report", args.report)):
            if path:
                print(f"wrote {label}: {path}")
    return 0


def cmd_sweep(args, parser) -> int:
    from policyc.runtime.data import DataError
    from policyc.runtime.sweep import parse_grid, run_sweep, write_sweep

    from policyc.runtime.sweep import LOWER_IS_BETTER, METRICS

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
        rows = run_sweep(args.file, grid, args.data, account, args, jobs=max(1, args.jobs))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, "text")
        return 1
    sign = 1.0 if args.sort in LOWER_IS_BETTER else -1.0
    rows.sort(key=lambda r: (r[args.sort] is None, sign * (r[args.sort] or 0.0)))
    write_sweep(rows, args.out)
    return 0


def cmd_run(args, parser) -> int:
    import asyncio

    from policyc.runtime.live import eventloop, view
    from policyc.runtime.live.protocol import encode_indented
    from policyc.runtime.live.runner import LiveRuntime, RunConfig

    from policyc.compiler.build import compile_checked

    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            parser.error(f"argument --token-file: cannot read {args.token_file}: {exc.strerror}")
        if not token:
            parser.error(f"argument --token-file: {args.token_file} is empty")
    elif args.intents or args.control:
        parser.error("--intents and --control need --token-file")
    result = _checked_or_exit(args)
    if result is None:
        return 1
    runtime = LiveRuntime(compile_checked(result, on_compile=_say), RunConfig(
        feed_url=args.feed, venue_url=args.venue, feed_format=args.feed_format, intents=args.intents,
        control=args.control, token=token, log_path=args.log, duration=args.duration,
        flatten_on_exit=args.flatten_on_exit, busy_poll=args.busy_poll))
    async def run_and_watch() -> dict:
        run = asyncio.ensure_future(runtime.run())
        await view.watch(runtime, run)
        return await run

    status = eventloop.run(run_and_watch())
    status.pop("recent")
    print(encode_indented(status))
    print(f"decision log: {args.log}")
    return 0


def cmd_replay_feed(args, parser) -> int:
    from policyc.runtime.data import DataError
    from policyc.runtime.live import eventloop
    from policyc.runtime.live.replay import load_recording, serve

    try:
        rec = load_recording(args.data, args.date_format)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    host, port = args.listen
    print(f"replaying {len(rec):,} events of {', '.join(rec.instruments)} on ws://{host}:{port}", file=sys.stderr)
    sent = eventloop.run(eventloop.until_signal(
        lambda stop: serve(rec, host, port, args.format, args.speed, args.rate, args.loop, args.clients, stop=stop)))
    print(f"sent {sent:,} events", file=sys.stderr)
    return 0


def cmd_paper_venue(args, parser) -> int:
    from policyc.runtime.live import eventloop
    from policyc.runtime.live.paper import PaperVenue, serve

    venue = PaperVenue(fees_bps=args.fees_bps, latency_ms=args.latency, feed_format=args.feed_format)
    host, port = args.listen
    eventloop.run(eventloop.until_signal(lambda stop: serve(venue, host, port, args.feed, stop=stop)))
    print(json.dumps({"fills": len(venue.fills), "latency": venue.percentiles()}), file=sys.stderr)
    return 0


COMMANDS = {"validate": cmd_validate, "hash": cmd_hash, "compile": cmd_compile, "explain": cmd_explain,
            "backtest": cmd_backtest, "sweep": cmd_sweep, "run": cmd_run, "replay-feed": cmd_replay_feed,
            "paper-venue": cmd_paper_venue}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
