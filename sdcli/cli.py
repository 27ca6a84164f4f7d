"""The command line: Typer options -> config -> runner. The one place where errors become exit codes.

Nothing heavy is imported at module level: ``sdcli --help`` and argument errors never load torch.
Every generating subcommand is built from one option table (``SHARED``) plus its task's own options,
so the CompVis spellings (``--ddim_steps``, ``--n_samples`` ...) work everywhere.
"""

from __future__ import annotations

import copy
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

from . import __version__, compat, config, schedulers
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_STDOUT_CLOSED, EXIT_USAGE, SdcliError, StdoutClosed,
                     one_line)

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

O = typer.Option


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


class Opt:
    """One command-line option: its Python name, type and typer.Option."""

    def __init__(self, name: str, annotation: Any, option: Any):
        self.name, self.annotation, self.option = name, annotation, option


# Options that are not config keys.
CONFIG_FILES = Opt("config", Optional[List[str]], O(None, "--config", "-c", help="Run config YAML (repeatable; later wins), a preset name from configs/; for a single-file model also its diffusers folder or original LDM inference YAML."))
SETS = Opt("set_", Optional[List[str]], O(None, "--set", help="Override one config key: --set steps=30 (repeatable)."))
SHARED = [
    Opt("prompt", Optional[str], O(None, "--prompt", "-p", help="The prompt (default: the original scripts' one).")),
    Opt("from_file", Optional[str], O(None, "--from-file", "--from_file", help="Prompt file: .txt (one per line), .jsonl, .yaml or .csv with per-row settings.")),
    Opt("negative_prompt", Optional[str], O(None, "--negative-prompt", "--negative_prompt", help="What not to draw.")),
    Opt("repeat", Optional[int], O(None, "--repeat", help="With --from-file: images per line per iteration.")),
    Opt("model", Optional[str], O(None, "--model", "--ckpt", "-m", help="Hub id, diffusers folder, single .safetensors file, or 'tiny'.")),
    Opt("model_config", Optional[str], O(None, "--model-config", help="For a single-file model: a local diffusers folder or an LDM inference YAML.")),
    CONFIG_FILES,
    SETS,
    Opt("outdir", Optional[str], O(None, "--outdir", "-o", help="Output folder (default outputs/<task>-samples).")),
    Opt("steps", Optional[int], O(None, "--steps", "--ddim_steps", "--ddim-steps", help="Denoising steps [{default}].")),
    Opt("scale", Optional[float], O(None, "--scale", "--cfg-scale", help="Classifier-free guidance scale [{default}].")),
    Opt("H", Optional[int], O(None, "--H", "--height", help="Height in pixels, multiple of 8 [{default}].")),
    Opt("W", Optional[int], O(None, "--W", "--width", help="Width in pixels, multiple of 8 [{default}].")),
    Opt("n_samples", Optional[int], O(None, "--n-samples", "--n_samples", help="Batch size [{default}].")),
    Opt("n_iter", Optional[int], O(None, "--n-iter", "--n_iter", help="Repeat the whole batch list N times [{default}].")),
    Opt("n_rows", Optional[int], O(None, "--n-rows", "--n_rows", help="Images per grid row [n_samples].")),
    Opt("seed", Optional[int], O(None, "--seed", help="Base seed: image k of the run uses seed+k [{default}].")),
    Opt("fixed_code", Optional[bool], O(None, "--fixed-code", "--fixed_code", help="One starting noise for every batch.")),
    Opt("scheduler", Optional[str], O(None, "--scheduler", "--sampler", help=f"{', '.join(schedulers.TABLE)}, or model (the model's own) [{{default}}]; also {', '.join(schedulers.ALIASES)}.")),
    Opt("eta", Optional[float], O(None, "--eta", "--ddim_eta", "--ddim-eta", help="DDIM eta (0 = deterministic; the other schedulers ignore it, and record eta null) [{default}].")),
    Opt("device", Optional[str], O(None, "--device", help="auto, cpu, cuda, cuda:N or mps [auto].")),
    Opt("precision", Optional[str], O(None, "--precision", help="auto, fp32, fp16, bf16 (autocast = auto, full = fp32) [auto].")),
    Opt("skip_grid", Optional[bool], O(None, "--skip-grid", "--skip_grid", help="Do not write the grid.")),
    Opt("skip_save", Optional[bool], O(None, "--skip-save", "--skip_save", help="Do not write individual samples.")),
    Opt("format", Optional[str], O(None, "--format", help="Image files of samples and grids: png, jpg or webp (metadata in EXIF as A1111 writes it) [png].")),
    Opt("quality", Optional[int], O(None, "--quality", help="JPEG/WebP quality 1-100; WebP at 100 is lossless (keeps the watermark) [95].")),
    Opt("safety_checker", Optional[bool], O(None, "--safety-checker/--no-safety-checker", help="Run the safety checker [on].")),
    Opt("safety_checker_source", Optional[str], O(None, "--safety-checker-source", help="Folder or hub id of the safety checker [the model's own].")),
    Opt("watermark", Optional[bool], O(None, "--watermark/--no-watermark", help="Invisible watermark [on].")),
    Opt("watermark_text", Optional[str], O(None, "--watermark-text", help="Watermark payload [SDV2].")),
    Opt("allow_unsafe_pickle", Optional[bool], O(None, "--allow-unsafe-pickle", help="Allow .ckpt/.pt pickle checkpoints (they can run code).")),
    Opt("variant", Optional[str], O(None, "--variant", help="Weights variant to load, e.g. fp16 (*.fp16.safetensors) [the only one there, else the plain weights].")),
    Opt("quiet", Optional[bool], O(None, "--quiet", "-q", help="Only warnings and errors on stderr.")),
    Opt("attention_slicing", Optional[bool], O(None, "--attention-slicing", help="Attention in slices: less memory, usually slower.")),
    Opt("vae_slicing", Optional[bool], O(None, "--vae-slicing", help="Decode a batch one image at a time (less memory).")),
    Opt("vae_tiling", Optional[bool], O(None, "--vae-tiling", help="Decode in tiles: large images in little memory.")),
    Opt("offload", Optional[str], O(None, "--offload", help="none, model or sequential: keep idle parts on the CPU (CUDA only) [none].")),
    Opt("channels_last", Optional[bool], O(None, "--channels-last", help="Channels-last memory layout for UNet and VAE.")),
    Opt("compile", Optional[bool], O(None, "--compile", help="torch.compile the UNet: slow first batch, faster after.")),
    Opt("resume", Optional[bool], O(None, "--resume", help="Skip jobs whose image is already complete in --outdir (same command).")),
    Opt("fail_fast", Optional[bool], O(None, "--fail-fast", help="Stop at the first failed item (default: record it, go on, exit 1).")),
    Opt("json", bool, O(False, "--json", help="Print a JSON summary on stdout at the end (logs stay on stderr).")),
    Opt("dry_run", bool, O(False, "--dry-run", help="Check everything and list the jobs, without loading the model.")),
    Opt("debug", bool, O(False, "--debug", help="Show tracebacks.")),
] + [Opt(f.name, bool if f.kind is bool else Optional[f.kind], O(False if f.kind is bool else None, *f.spellings, help=f.help))
     for f in compat.FLAGS]  # the original scripts' other flags (compat.py)
NOT_CONFIG = {"config", "set_", "dry_run", "debug", "json"}


def load_config(task: str, values: dict[str, Any]):
    flags = compat.to_config({k: v for k, v in values.items() if k not in NOT_CONFIG})
    return config.load(task, values.get("config"), values.get("set_"), flags)


def generate(task: str, values: dict[str, Any]) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
    cfg = load_config(task, values)  # argument and config errors end here, before any other import
    from . import runner
    from .plan import plan
    from .progress import make_reporter

    p = plan(cfg, dry_run=bool(values.get("dry_run")))
    reporter = make_reporter(cfg.quiet)
    for line in p.warnings:
        reporter.warn(line)
    for line in p.notes:
        reporter.info(line)
    if values.get("dry_run"):
        for line in p.dry_run():
            print(json.dumps(line))
        reporter.info(f"dry run: {len(p.jobs)} image(s) in {len(p.batches)} batch(es) into {p.outdir}, "
                      f"model {p.source.name} ({p.source.kind})")
        return EXIT_OK
    summary = runner.run(p, reporter)
    code = EXIT_INTERRUPTED if summary.interrupted else EXIT_FAILURE if summary.failed else EXIT_OK
    (reporter.warn if code else reporter.info)(summary.describe())
    if summary.interrupted:
        reporter.warn("rerun the same command with --resume to finish")
    if values.get("json"):
        print(json.dumps({"status": summary.status, "exit_code": code, **dataclasses.asdict(summary)},
                         ensure_ascii=False))
    return code


def _with_default(o: Opt, defaults) -> Opt:
    """The option with ``{default}`` in its help replaced by the task's default (config.TASK_DEFAULTS)."""
    if "{default}" not in (o.option.help or ""):
        return o
    value = getattr(defaults, o.name)
    if value is None:  # seed: random; H/W: from the input image or the model
        value = "random" if o.name == "seed" else "the input image's" if defaults.task in config.SIZE_FROM_INPUT \
            else "the model's"
    option = copy.copy(o.option)
    option.help = o.option.help.replace("{default}", str(value))
    return Opt(o.name, o.annotation, option)


def add_generating_command(task: str, help_text: str, extra: list[Opt] = ()) -> None:
    """Register ``sdcli TASK`` with the shared options plus the task's own (which may replace a shared
    one of the same name, to add spellings)."""
    own = {o.name: o for o in extra}
    defaults = config.defaults(task)
    opts = [_with_default(o, defaults) for o in [own.pop(o.name, o) for o in SHARED] + list(own.values())]

    @stdout_guard
    def command(**values: Any) -> None:
        code = generate(task, values)
        if code:
            raise typer.Exit(code)

    command.__signature__ = inspect.Signature(
        [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.option, annotation=o.annotation)
         for o in opts])
    command.__annotations__ = {o.name: o.annotation for o in opts}
    command.__doc__ = help_text
    app.command(task, help=help_text, no_args_is_help=False)(command)


def _image(*names: str) -> Opt:
    return Opt("image", Optional[str], O(None, "--image", *names, help="Input image: a file, a folder of images, or a quoted glob."))


def _strength() -> Opt:
    return Opt("strength", Optional[float], O(None, "--strength", help="How much to change the image, 0..1 [{default}]."))


RESIZE = Opt("resize_mode", Optional[str], O(None, "--resize-mode", help="Bring inputs to the output size: crop (keep aspect, cut the overflow) or resize (stretch) [crop]."))

add_generating_command("txt2img", "Generate images from text prompts (CompVis scripts/txt2img.py options accepted).")
add_generating_command("img2img", "Change an image guided by a prompt (CompVis scripts/img2img.py options accepted).", [
    _image("--init-img", "--init_img"), _strength(), RESIZE])
add_generating_command("inpaint", "Repaint the white part of a mask.", [
    _image(), Opt("mask", Optional[str], O(None, "--mask", help="Mask image, white = repaint (any mode; same size as the image).")),
    Opt("indir", Optional[str], O(None, "--indir", help="Folder of x.png + x_mask.png pairs, as CompVis inpaint.py: one image per pair, written as OUTDIR/x.png, no grid.")),
    Opt("paste_back", Optional[bool], O(None, "--paste-back/--no-paste-back", help="Put the input's unmasked pixels back into the result, as CompVis inpaint.py [on].")),
    Opt("mask_blur", Optional[int], O(None, "--mask-blur", help="Feather the paste-back edge by N pixels (0: the hard edge of inpaint.py) [{default}].")),
    _strength(), RESIZE])
add_generating_command("depth2img", "Make a new image with the depth of the input (SD 2 depth model).", [
    _image(), _strength(),
    Opt("depth_map", Optional[str], O(None, "--depth-map", help="Depth map image (white = near) instead of estimating one.")),
    Opt("save_depth", Optional[bool], O(None, "--save-depth", help="Save the depth map used beside each sample (NNNNN-depth.png).")),
    RESIZE])
add_generating_command("instruct-edit", "Edit an image by an instruction (InstructPix2Pix; edit_cli.py options accepted).", [
    _image("--input"),
    Opt("prompt", Optional[str], O(None, "--prompt", "--edit", "-p", help="The edit instruction, e.g. 'make it snowy'.")),
    Opt("scale", Optional[float], O(None, "--scale", "--cfg-text", help="Text guidance scale [{default}].")),
    Opt("image_guidance_scale", Optional[float], O(None, "--image-guidance-scale", "--cfg-image", help="Image guidance scale, >= 1 [{default}].")),
    Opt("resolution", Optional[int], O(None, "--resolution", help="Longest output side, rounded to 64 as edit_cli.py [input size].")),
    Opt("output", Optional[str], O(None, "--output", help="Write the single result to this file (.png, .jpg, .webp).")),
    Opt("manifest", Optional[bool], O(None, "--manifest", help="With --output: also append its record to manifest.jsonl beside it.")),
    RESIZE])


@config_app.command("show")
@stdout_guard
def config_show(
    task: str = O("txt2img", "--task", "-t", help="Subcommand whose config to show."),
    config: Optional[List[str]] = CONFIG_FILES.option,
    set_: Optional[List[str]] = SETS.option,
) -> None:
    """Print the resolved config (defaults < --config files < --set) as YAML."""
    from . import config as config_mod

    cfg = config_mod.load(task, config, set_, {})
    sys.stdout.write(config_mod.to_yaml(cfg))


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
            print(f"sdcli: error: {one_line(str(e))}", file=sys.stderr, flush=True)
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
        return fail(one_line(str(e)), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        return fail("interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # a bug, or an environment problem we did not foresee
        if debug:
            raise
        return fail(f"{type(e).__name__}: {one_line(str(e))[:500]} (rerun with --debug for a traceback)", EXIT_FAILURE)


def _failure_reporter(as_json: bool):
    """fail(message, code) -> code: the error line on stderr, and with --json the one JSON document on stdout."""

    def fail(message: str, code: int) -> int:
        prefix = "sdcli: " if code == EXIT_INTERRUPTED else "sdcli: error: "
        print(prefix + message, file=sys.stderr)
        if as_json:
            status = "interrupted" if code == EXIT_INTERRUPTED else "error"
            try:
                print(json.dumps({"status": status, "exit_code": code, "error": message}, ensure_ascii=False), flush=True)
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
