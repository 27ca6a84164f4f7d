"""The command line: Typer options -> config -> plan -> runner. The one place where errors become exit codes.

Nothing heavy is imported at module level: ``sdcli --help`` and argument errors never load torch.
Every generating subcommand is built from the option table in options.py (shared options plus the task's
own), so the CompVis spellings (``--ddim_steps``, ``--n_samples`` ...) work everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from typing import Any, List, Optional

import typer

try:  # typer >= 0.26 vendors click as typer._click (sdcli pins < 0.26 for start-up time, see pyproject)
    from typer._click import exceptions as click_exc
except ImportError:
    from click import exceptions as click_exc

from . import __version__, compat, config, options
from .train_cli import train_app
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_STDOUT_CLOSED, EXIT_USAGE, SdcliError, StdoutClosed,
                     one_line, textsafe)

app = typer.Typer(
    name="sdcli",
    help="Stable Diffusion from the command line: txt2img and friends on Hugging Face diffusers.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the resolved configuration.", no_args_is_help=True)
watermark_app = typer.Typer(help="Invisible watermark tools.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(watermark_app, name="watermark")
app.add_typer(train_app, name="train")

O = typer.Option
PROCESS = {"name": "sdcli"}  # how error lines start: sdcli[2/3] for a shard


def stdout_guard(fn):
    """A closed stdout (BrokenPipeError) becomes StdoutClosed here, before click turns it into a plain exit 1."""
    import functools

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise StdoutClosed("stdout closed") from None

    return guarded




def load_config(task: str, values: dict[str, Any]):
    flags = compat.to_config({k: v for k, v in values.items() if k not in options.NOT_CONFIG})
    return config.load(task, values.get("config"), values.get("set_"), flags)


def generate(task: str, values: dict[str, Any]) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
    cfg = load_config(task, values)  # argument and config errors end here, before any other import
    from . import runner
    from .plan import plan
    from .progress import make_reporter

    p = plan(cfg, dry_run=bool(values.get("dry_run")))
    reporter = make_reporter(cfg.quiet, tag=p.shard.fraction if p.shard.sharded else None,
                             live=p.shard.source in ("", "--shard"))
    PROCESS["name"] = reporter.name  # errors name the shard too
    for line in p.warnings:
        reporter.warn(line)
    for line in p.notes:
        reporter.info(line)
    if values.get("dry_run"):
        for line in p.dry_run():
            print(json.dumps(line))  # ASCII: safe for any prompt
        reporter.info(f"dry run: {len(p.jobs)} image(s) in {len(p.batches)} batch(es) into {p.outdir}, "
                      f"model {p.source.name} ({p.source.kind}), {p.backend.describe()}")
        return EXIT_OK
    summary = runner.run(p, reporter)
    code = summary.exit_code
    (reporter.warn if summary.status != "ok" else reporter.info)(summary.describe())
    if summary.interrupted:
        reporter.warn("rerun the same command with --resume to finish")
    if values.get("json"):
        print(json.dumps(textsafe(summary.as_json()), ensure_ascii=False))
        if summary.merged is not None:
            print(json.dumps(textsafe(summary.merged), ensure_ascii=False))
    return code


def _typer_parameter(o: options.Opt, defaults) -> inspect.Parameter:
    """A Typer option from the table, ``{default}`` in its help replaced by the task's default."""
    text = o.help
    if "{default}" in text:
        value = getattr(defaults, o.name)
        if value is None:  # seed: random; H/W: from the input image or the model
            value = "random" if o.name == "seed" else "the input image's" if defaults.task in config.SIZE_FROM_INPUT \
                else "the model's"
        text = text.replace("{default}", str(value))
    annotation = Optional[List[str]] if o.kind is list else o.kind if o.default is False else Optional[o.kind]
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(o.default, *o.spellings, help=text))


def add_generating_command(task: str, help_text: str, extra: list[options.Opt]) -> None:
    """Register ``sdcli TASK`` with the shared options plus the task's own (which may replace a shared
    one of the same name, to add spellings)."""
    own = {o.name: o for o in extra}
    defaults = config.defaults(task)
    params = [_typer_parameter(o, defaults) for o in [own.pop(o.name, o) for o in options.SHARED] + list(own.values())]

    @stdout_guard
    def command(**values: Any) -> None:
        code = generate(task, values)
        if code:
            raise typer.Exit(code)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help_text
    app.command(task, help=help_text, no_args_is_help=False)(command)


for _task, (_help, _own) in options.COMMANDS.items():
    add_generating_command(_task, _help, _own)


@config_app.command("show")
@stdout_guard
def config_show(
    task: str = O("txt2img", "--task", "-t", help="Subcommand whose config to show."),
    config: Optional[List[str]] = O(None, *options.CONFIG_FILES.spellings, help=options.CONFIG_FILES.help),
    set_: Optional[List[str]] = O(None, *options.SETS.spellings, help=options.SETS.help),
) -> None:
    """Print the resolved config (defaults < --config files < --set) as YAML."""
    from . import config as config_mod
    from .configfiles import to_yaml

    sys.stdout.write(to_yaml(config_mod.load(task, config, set_, {})))


@watermark_app.command("decode")
@stdout_guard
def watermark_decode(
    images: List[str] = typer.Argument(..., help="Images to read."),
    length: Optional[int] = O(None, "--length", help="Payload length in bytes [from the image's metadata, else 4]."),
) -> None:
    """Print the invisible watermark payload of each image."""
    from . import postprocess

    def decode(path: str) -> None:
        payload = postprocess.read_watermark(path, length)
        print(f"{path}: {payload.decode('utf-8', errors='replace')}")

    _each(images, decode)


@app.command("grid")
@stdout_guard
def grid(outdir: str = typer.Argument(..., help="The --outdir of a run split with --shard or a launcher.")) -> None:
    """Write the grid of each split run in OUTDIR whose images are all done (the last shard does it itself)."""
    from .grids import build_all

    waiting = 0
    for spec, outcome in build_all(outdir):
        what = f"run {spec.key} ({len(spec.jobs)} images)"
        if outcome.status == "incomplete":
            waiting += 1
            print(f"{what}: {outcome.missing} image(s) not done; finish them with the run's command and --resume")
        elif outcome.status == "sizes":
            print(f"{what}: images of different sizes, no grid")
        else:
            print(f"{what}: {'wrote' if outcome.status == 'written' else 'already has'} {outcome.path}")
    if waiting:
        raise typer.Exit(EXIT_FAILURE)


@app.command("info")
@stdout_guard
def info(images: List[str] = typer.Argument(..., help="Images to read.")) -> None:
    """Print the generation metadata stored in each image."""
    from .outputs import read_metadata

    def show(path: str) -> None:
        text = read_metadata(path)
        if "parameters" not in text and "sdcli" not in text:
            print(f"{path}: no sdcli or A1111 metadata")
            return
        print(f"== {path}")
        if text.get("parameters"):
            print(text["parameters"])
        if text.get("sdcli"):
            print(json.dumps(json.loads(text["sdcli"]), indent=2, ensure_ascii=False))

    _each(images, show)


def _each(paths: List[str], action) -> None:
    """Run ``action`` on every file; a file that fails gets its error line and the others still run. The
    exit code is the first failure's."""
    code = EXIT_OK
    for path in paths:
        try:
            action(path)
        except SdcliError as e:
            print(textsafe(f"sdcli: error: {one_line(str(e))}"), file=sys.stderr, flush=True)
            code = code or e.exit_code
    if code:
        raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"sdcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = O(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """Stable Diffusion from the command line."""


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; return the exit code. Errors become one line on stderr (tracebacks only with --debug) and,
    with --json, one JSON document on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SDCLI_DEBUG") == "1"
    fail = _failure_reporter("--json" in args)
    try:
        rv = app(args=args, prog_name="sdcli", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click_exc.NoArgsIsHelpError as e:  # a bare group: show its help, as --help would
        print(e.ctx.get_help())
        return 0
    except click_exc.ClickException as e:
        hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
        return fail(f"{one_line(e.format_message())}{hint}", e.exit_code if e.exit_code != 1 else EXIT_USAGE)
    except (BrokenPipeError, StdoutClosed):  # stdout closed early (`sdcli ... | head -1`): nothing more to say
        _silence_stdout()
        return EXIT_STDOUT_CLOSED
    except SdcliError as e:
        if debug:
            import traceback

            traceback.print_exc()
        return fail(one_line(str(e)), e.exit_code, e.summary)
    except (KeyboardInterrupt, typer.Abort):
        return fail("interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # a bug, or an environment problem we did not foresee
        if debug:
            raise
        return fail(f"{type(e).__name__}: {one_line(str(e))[:500]} (rerun with --debug for a traceback)", EXIT_FAILURE)


def _failure_reporter(as_json: bool):
    """fail(message, code) -> code: the error line on stderr, and with --json the one JSON document on stdout."""

    def fail(message: str, code: int, summary=None) -> int:
        prefix = f"{PROCESS['name']}: " + ("" if code == EXIT_INTERRUPTED else "error: ")
        print(textsafe(prefix + message), file=sys.stderr)
        if as_json:
            status = "interrupted" if code == EXIT_INTERRUPTED else "error"
            try:
                doc = {"status": status, "exit_code": code, "error": message,
                       **(dataclasses.asdict(summary) if summary is not None else {})}
                print(json.dumps(textsafe(doc), ensure_ascii=False), flush=True)
            except BrokenPipeError:
                _silence_stdout()
                return EXIT_STDOUT_CLOSED
        return code

    return fail


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run() -> None:
    code = main()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()  # output to a pipe is buffered: a reader that left shows here
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_STDOUT_CLOSED
    sys.exit(code)
