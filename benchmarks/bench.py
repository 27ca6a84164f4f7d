"""sdcli benchmarks: whole processes, alternated, measured side by side in one run -> BENCHMARKS.md.

    python benchmarks/bench.py                      # all sections, full-size SD 1.5 (random weights)
    python benchmarks/bench.py --only startup,overhead,memory --runs 3
    python benchmarks/bench.py --smoke --output /tmp/b.md   # tiny model, 64 px, 2 steps, 1 run each (CI)

Method: every measurement is a whole process (what a user or a cron job pays), started with
``subprocess.Popen`` and reaped with ``os.wait4`` (wall time by ``time.perf_counter`` around it, peak RSS of
the child from ``ru_maxrss``). The commands of a section run alternated (A B C A B C ...), so load from
other processes on the machine hits all of them alike, and ratios are taken between medians of the same
run. All children get one identical environment, with OMP_NUM_THREADS unset (torch uses every core).

Sections: startup, overhead, memory, batch, options (see ``--help``). Writes the markdown report
(default BENCHMARKS.md at the repo root) and the raw numbers as JSON (default benchmarks/results.json;
with --output, beside the report). Exits 1 when a command exited with an unexpected code.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent  # the venv's bin: its python and its sdcli console script
PYTHON = str(BIN / Path(sys.executable).name)
SDCLI = str(BIN / "sdcli")
REFERENCE = str(HERE / "reference.py")
SECTIONS = ("startup", "overhead", "memory", "batch", "options")
PROMPT = "a photograph of an astronaut riding a horse"
BATCH_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "a lighthouse at dawn, oil painting",
    "a bowl of ramen on a wooden table, studio light",
    "a red fox in fresh snow, telephoto",
    "an isometric cutaway of a tiny apartment",
    "a watercolor map of an imaginary island",
    "a cyberpunk street market at night, rain",
    "a close-up of a dragonfly wing, macro",
]
# Options section: flags added to the plain overhead command. --offload is expected to fail on a CPU.
OPTIONS = [
    ("attention slicing", ["--attention-slicing"]),
    ("VAE slicing", ["--vae-slicing"]),
    ("VAE tiling", ["--vae-tiling"]),
    ("channels last", ["--channels-last"]),
    ("torch.compile", ["--compile"]),
    ("bf16", ["--precision", "bf16"]),
]
OFFLOAD = ("model offload", ["--offload", "model"])
COMPILE_RE = re.compile(r"compiled the UNet in ([0-9.]+)s")
LOADED_RE = re.compile(r"loaded in ([0-9.]+)s")
DEVICE_RE = re.compile(r"loading .* on (\S+), (\S+)")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- running processes ----------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    rss_kib: int  # peak resident set size of the child (ru_maxrss, KiB on Linux)
    rc: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user + system CPU seconds of the child
    other_cpu_s: Optional[float] = None  # CPU seconds other processes used meanwhile (noise indicator)


def busy_cpu_seconds() -> Optional[float]:
    """CPU seconds spent busy on the whole machine since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_once(argv: list[str], env: dict, timeout: float) -> Run:
    """One whole process: wall time around it, exit code and peak RSS from os.wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=str(ROOT))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C / SIGTERM of the harness: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
        busy1 = busy_cpu_seconds()
        proc.returncode = rc = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        cpu = usage.ru_utime + usage.ru_stime
        other = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else None
        out.seek(0)
        err.seek(0)
        return Run(seconds, usage.ru_maxrss, rc, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), cpu, other)


@dataclass
class Spec:
    """One measured command (or a group of commands whose times add up, e.g. 8 single-prompt runs)."""

    key: str
    label: str
    make: Callable[[int], list[list[str]]]  # run number -> the commands of that run
    shown: str  # the command as the report shows it
    expect_rc: int = 0
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)  # noisy runs measured again

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.runs]

    def rss(self) -> list[int]:
        return [r.rss_kib for r in self.runs]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.rc == self.expect_rc for r in self.runs)

    def median(self) -> float:
        return statistics.median(self.seconds())

    def stderr0(self) -> str:
        return self.runs[0].stderr if self.runs else ""

    def as_json(self) -> dict:
        return {"label": self.label, "command": self.shown, "expect_rc": self.expect_rc,
                "seconds": [round(s, 4) for s in self.seconds()], "rss_kib": self.rss(),
                "cpu_s": [round(r.cpu_s, 3) for r in self.runs],
                "other_cpu_s": [None if r.other_cpu_s is None else round(r.other_cpu_s, 2) for r in self.runs],
                "rc": [r.rc for r in self.runs],
                "median_s": round(self.median(), 4) if self.runs else None,
                "discarded_noisy_s": [round(r.seconds, 3) for r in self.discarded],
                "stderr_tail": tail(self.stderr0(), 600) if self.runs and not self.ok else None}


def tail(text: str, n: int) -> str:
    return text[-n:].strip()


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = child_env(args.smoke)
        self.tmp = Path(tempfile.mkdtemp(prefix="sdcli-bench-"))
        self.failures: list[str] = []
        self.model: Optional[str] = None
        self.cached = False
        self.waited_s = 0.0

    # running
    def alternate(self, specs: list[Spec], runs: int, guard: bool = True) -> None:
        """A B C A B C ...: every round runs each command once, in the same order.

        With ``guard`` (and --max-noise > 0), each run waits for a quiet machine first, and a run during which
        other processes used more than --max-noise cores is discarded and repeated (up to --retries times)."""
        a = self.args
        guard = guard and a.max_noise > 0
        for i in range(runs):
            for spec in specs:
                for attempt in range(a.retries + 1 if guard else 1):
                    if guard:
                        self.wait_quiet()
                    run = self._run_spec(spec, i)
                    noisy = guard and run.other_cpu_s is not None and run.other_cpu_s > a.max_noise * run.seconds
                    flag = "" if run.rc == spec.expect_rc else f"  UNEXPECTED exit {run.rc}: {tail(run.stderr, 300)}"
                    noise = f", others used {run.other_cpu_s:.1f} CPU-s meanwhile" if run.other_cpu_s is not None else ""
                    last_try = attempt == a.retries
                    verdict_ = " -> discarded (noisy), again" if noisy and not last_try else \
                        " -> kept although noisy (out of retries)" if noisy else ""
                    log(f"  [{i + 1}/{runs}] {spec.label}: {run.seconds:.3f}s (CPU {run.cpu_s:.1f}s), rc {run.rc}, "
                        f"peak RSS {run.rss_kib / 1024:.0f} MiB{noise}{flag}{verdict_}")
                    if noisy and not last_try and run.rc == spec.expect_rc:
                        spec.discarded.append(run)
                        continue
                    spec.runs.append(run)
                    break
        for spec in specs:
            if not spec.ok:
                self.failures.append(f"{spec.label}: exit {[r.rc for r in spec.runs]} "
                                     f"(expected {spec.expect_rc}): {tail(spec.stderr0(), 300)}")

    def _run_spec(self, spec: Spec, i: int) -> Run:
        total, rss, cpu, other = 0.0, 0, 0.0, 0.0
        for argv in spec.make(i):  # a group's times add up; it stops at the first unexpected exit
            last = run_once(argv, self.env, self.args.timeout)
            total += last.seconds
            rss = max(rss, last.rss_kib)
            cpu += last.cpu_s
            other = None if other is None or last.other_cpu_s is None else other + last.other_cpu_s
            if last.rc != spec.expect_rc:
                break
        return Run(total, rss, last.rc, last.stdout, last.stderr, cpu, other)

    def wait_quiet(self) -> None:
        """Wait (up to --wait-quiet seconds) until other processes use at most --max-noise cores."""
        a = self.args
        deadline = time.monotonic() + a.wait_quiet
        waited = 0.0
        while True:
            b0 = busy_cpu_seconds()
            time.sleep(1.0)
            b1 = busy_cpu_seconds()
            if b0 is None or b1 is None or b1 - b0 <= a.max_noise or time.monotonic() > deadline:
                break
            waited += 1.0
        if waited >= 5:
            log(f"  waited {waited:.0f}s for the machine to be quiet")
        self.waited_s += waited

    def out(self, name: str) -> Path:
        return self.tmp / name

    # the model and the commands
    def ensure_model(self) -> str:
        if self.model:
            return self.model
        a = self.args
        if a.model:
            self.model = str(Path(a.model).expanduser().resolve())
        elif a.smoke:
            sys.path.insert(0, str(ROOT))
            from sdcli import tiny

            folder = tiny.cache_root() / "txt2img"
            if not (folder / "model_index.json").is_file():
                folder = Path(self._build(["--tiny"]))
            self.model = str(folder)
        else:
            import build_sd15

            folder = build_sd15.default_folder()
            if not build_sd15.is_built(folder):
                log(f"building the full-size SD 1.5 architecture (random weights) into {folder} ...")
                folder = Path(self._build([]))
            self.model = str(folder.resolve())
        log(f"model: {self.model} ({dir_size(Path(self.model)) / 2**30:.2f} GiB)")
        return self.model

    def _build(self, extra: list[str]) -> str:
        proc = subprocess.run([PYTHON, str(HERE / "build_sd15.py"), *extra], env=self.env, cwd=str(ROOT),
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"bench: building the model failed (exit {proc.returncode})")
        sys.stderr.write(proc.stdout)
        return proc.stdout.strip().splitlines()[-1]

    def warm_cache(self) -> None:
        """Read the model files once, so no measured run pays the first read from disk."""
        if self.cached:
            return
        t0 = time.perf_counter()
        for p in sorted(Path(self.model).rglob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass
        self.cached = True
        log(f"read the model files once into the page cache ({time.perf_counter() - t0:.1f}s)")

    def sdcli_gen(self, outdir: str, *extra: str, prompt: str = PROMPT, seed: int = 42,
                  safety: bool = False, watermark: bool = False) -> list[str]:
        a = self.args
        return [SDCLI, "txt2img", "--model", self.model, "--prompt", prompt, "--steps", str(a.steps),
                "--H", str(a.size), "--W", str(a.size), "--n_samples", "1", "--n_iter", "1", "--seed", str(seed),
                "--scheduler", "ddim", "--safety-checker" if safety else "--no-safety-checker",
                "--watermark" if watermark else "--no-watermark", "--skip-grid", "--outdir", outdir, *extra]

    def reference(self, out_png: str) -> list[str]:
        a = self.args
        return [PYTHON, REFERENCE, self.model, PROMPT, str(a.steps), str(a.size), str(a.size), "42", "ddim", out_png]

    def show(self, argv: list[str]) -> str:
        """The exact command, with the venv's bin, the model and the fresh output folder spelt short."""
        words = []
        for w in argv:
            if w == PYTHON:
                w = display_path(PYTHON)
            elif w == SDCLI:
                w = display_path(SDCLI)
            elif w == REFERENCE:
                w = display_path(REFERENCE)
            elif self.model and w == self.model:
                w = "$MODEL"
            elif w.startswith(str(self.tmp)):
                w = "$OUT" + w[len(str(self.tmp)):]
                w = re.sub(r"-0(?=\b|/|\.)", "-N", w)
            words.append(w if w.startswith("$") else shlex.quote(w))
        return " ".join(words)

    # --- sections ------------------------------------------------------------------------------------------

    def startup(self) -> dict:
        runs = self.args.startup_runs
        cmds = [
            ("import typer", [PYTHON, "-c", "import typer"], 0),
            ("sdcli --help", [SDCLI, "--help"], 0),
            ("sdcli txt2img --help", [SDCLI, "txt2img", "--help"], 0),
            ("sdcli config show", [SDCLI, "config", "show"], 0),
            ("argument error", [SDCLI, "txt2img", "--H", "65"], 2),
        ]
        specs = [Spec(f"startup:{label}", label, (lambda i, argv=argv: [argv]), self.show(argv), rc)
                 for label, argv, rc in cmds]
        log(f"startup: {len(specs)} commands x {runs} runs, alternated")
        if self.args.max_noise > 0:
            self.wait_quiet()
        self.alternate(specs, runs, guard=False)  # 0.1 s runs: too short for the per-run noise check
        base = specs[0].median()
        rows = []
        for s in specs:
            rows.append({**s.as_json(), "ratio_to_import_typer": round(s.median() / base, 3) if base else None,
                         "target": None if s is specs[0] else 1.5})
        return {"runs": runs, "rows": rows, "baseline": "import typer"}

    def overhead(self) -> dict:
        self.ensure_model()
        self.warm_cache()
        a = self.args
        specs = [
            Spec("overhead:sdcli", "sdcli", lambda i: [self.sdcli_gen(str(self.out(f"sdcli-{i}")))],
                 self.show(self.sdcli_gen(str(self.out("sdcli-0"))))),
            Spec("overhead:reference", "reference (diffusers script)",
                 lambda i: [self.reference(str(self.out(f"ref-{i}.png")))], self.show(self.reference(str(self.out("ref-0.png"))))),
            Spec("overhead:safety", "sdcli + safety checker",
                 lambda i: [self.sdcli_gen(str(self.out(f"safety-{i}")), safety=True)],
                 self.show(self.sdcli_gen(str(self.out("safety-0")), safety=True))),
            Spec("overhead:watermark", "sdcli + watermark",
                 lambda i: [self.sdcli_gen(str(self.out(f"watermark-{i}")), watermark=True)],
                 self.show(self.sdcli_gen(str(self.out("watermark-0")), watermark=True))),
        ]
        log(f"overhead: {len(specs)} commands x {a.runs} runs, alternated ({a.steps} steps, {a.size} px)")
        self.alternate(specs, a.runs)
        sd, ref, safety, wm = specs
        self.overhead_specs = {"sdcli": sd, "reference": ref, "safety": safety}
        same = compare(self.out("sdcli-0") / "samples" / "00000.png", self.out("ref-0.png"))
        repeat = compare(self.out("sdcli-0") / "samples" / "00000.png", self.out("sdcli-1") / "samples" / "00000.png") \
            if a.runs > 1 else None
        rows = [ref.as_json(), sd.as_json(), safety.as_json(), wm.as_json()]
        for row, s in zip(rows, (ref, sd, safety, wm)):
            row["ratio_to_reference"] = ratio(s, ref)
            row["paired_ratios"] = paired(s, ref)
            row["sdcli_load_s"] = [parse_float(LOADED_RE, r.stderr) for r in s.runs] if s is not ref else None
        for row, s in ((rows[2], safety), (rows[3], wm)):
            row["added_s_vs_sdcli"] = round(s.median() - sd.median(), 3) if s.runs and sd.runs else None
        flagged = "NSFW" in safety.stderr0()
        m = DEVICE_RE.search(sd.stderr0())
        self.device = m.group(1) if m else None
        return {"runs": a.runs, "steps": a.steps, "size": a.size, "rows": rows, "target_ratio": 1.03,
                "ratio": ratio(sd, ref), "pixels": same, "repeat_pixels": repeat, "safety_flagged": flagged,
                "device": self.device, "precision": m.group(2) if m else None}

    def memory(self) -> dict:
        self.ensure_model()
        specs = getattr(self, "overhead_specs", None)
        if specs is None:
            self.warm_cache()
            sd = Spec("memory:sdcli", "sdcli", lambda i: [self.sdcli_gen(str(self.out(f"mem-sdcli-{i}")))],
                      self.show(self.sdcli_gen(str(self.out("mem-sdcli-0")))))
            ref = Spec("memory:reference", "reference (diffusers script)",
                       lambda i: [self.reference(str(self.out(f"mem-ref-{i}.png")))],
                       self.show(self.reference(str(self.out("mem-ref-0.png")))))
            log(f"memory: 2 commands x {self.args.runs} runs, alternated")
            self.alternate([sd, ref], self.args.runs)
            specs = {"sdcli": sd, "reference": ref}
            measured_in = "memory"
        else:
            measured_in = "overhead"
        model = Path(self.model)
        weights = {name: dir_size(model / name) for name in ("unet", "vae", "text_encoder", "safety_checker")
                   if (model / name).is_dir()}
        loaded = sum(v for k, v in weights.items() if k != "safety_checker")
        rows = []
        for key, s in specs.items():
            w = loaded + (weights.get("safety_checker", 0) if key == "safety" else 0)
            rows.append({**s.as_json(), "weights_loaded_bytes": w,
                         "rss_over_weights": round(statistics.median(s.rss()) * 1024 / w, 3) if s.runs and w else None})
        return {"measured_in": measured_in, "model_bytes": dir_size(model), "weights_bytes": weights, "rows": rows}

    def batch(self) -> dict:
        self.ensure_model()
        self.warm_cache()
        a = self.args
        n = len(BATCH_PROMPTS)
        pfile = self.out("prompts.txt")
        pfile.write_text("\n".join(BATCH_PROMPTS) + "\n")

        def batched(i: int, size: int, name: str) -> list[str]:
            cmd = self.sdcli_gen(str(self.out(f"{name}-{i}")), "--from-file", str(pfile))
            cmd[cmd.index("--n_samples") + 1] = str(size)
            del cmd[cmd.index("--prompt"):cmd.index("--prompt") + 2]
            return cmd

        def singles(i: int) -> list[list[str]]:
            return [self.sdcli_gen(str(self.out(f"single-{i}-{k}")), prompt=p, seed=42 + k)
                    for k, p in enumerate(BATCH_PROMPTS)]

        specs = [
            Spec("batch:8", f"one run, --n_samples {n}", lambda i: [batched(i, n, "batch8")], self.show(batched(0, n, "batch8"))),
            Spec("batch:4", f"one run, --n_samples {n // 2}", lambda i: [batched(i, n // 2, "batch4")],
                 self.show(batched(0, n // 2, "batch4"))),
            Spec("batch:singles", f"{n} single-prompt runs (total)", singles,
                 f"{n} x " + self.show(self.sdcli_gen(str(self.out("single-0-K")), prompt="PROMPT_K", seed=42))
                 .replace("'PROMPT_K'", "PROMPT_K").replace("--seed 42", "--seed 42+K")),
        ]
        log(f"batch: {n} prompts, 3 ways x {a.batch_runs} runs, alternated")
        self.alternate(specs, a.batch_runs)
        single = specs[2]
        rows = []
        for s in specs:
            rows.append({**s.as_json(), "ratio_to_singles": ratio(s, single),
                         "per_image_s": round(s.median() / n, 3) if s.runs else None})
        diff = compare(self.out("batch8-0") / "samples" / "00000.png", self.out("single-0-0") / "samples" / "00000.png")
        return {"runs": a.batch_runs, "prompts": n, "rows": rows, "pixels_batch_vs_single": diff}

    def options(self) -> dict:
        self.ensure_model()
        self.warm_cache()
        a = self.args
        help_text = run_once([SDCLI, "txt2img", "--help"], self.env, 60).stdout
        available = lambda flags: all(re.search(re.escape(f) + r"\b", help_text) for f in flags if f.startswith("--"))
        plain = Spec("options:plain", "plain", lambda i: [self.sdcli_gen(str(self.out(f"opt-plain-{i}")))],
                     self.show(self.sdcli_gen(str(self.out("opt-plain-0")))))
        specs, missing = [plain], []
        for label, flags in OPTIONS:
            if not available(flags):
                missing.append({"label": label, "flags": " ".join(flags), "status": "not in this sdcli"})
                continue
            slug = re.sub(r"\W+", "-", label)
            specs.append(Spec(f"options:{slug}", label,
                              (lambda i, slug=slug, flags=flags: [self.sdcli_gen(str(self.out(f"opt-{slug}-{i}")), *flags)]),
                              " ".join(flags)))
        log(f"options: {len(specs)} commands x {a.options_runs} runs, alternated"
            + (f"; not in this sdcli: {', '.join(m['flags'] for m in missing)}" if missing else ""))
        self.alternate(specs, a.options_runs)
        plain_png = self.out("opt-plain-0") / "samples" / "00000.png"
        rows = [{**plain.as_json(), "flags": "", "ratio_to_plain": 1.0}]
        for s in specs[1:]:
            slug = s.key.split(":", 1)[1]
            row = {**s.as_json(), "flags": s.shown, "ratio_to_plain": ratio(s, plain), "paired_ratios": paired(s, plain),
                   "pixels_vs_plain": compare(self.out(f"opt-{slug}-0") / "samples" / "00000.png", plain_png)}
            times = [parse_float(COMPILE_RE, r.stderr) for r in s.runs]
            if "--compile" in s.shown:
                row["compile_s"] = times
            rows.append(row)
        # offload: CUDA only. On a CPU machine, expect exit 2 and one error line; with CUDA, measure it.
        offload = None
        label, flags = OFFLOAD
        if not available(flags):
            missing.append({"label": label, "flags": " ".join(flags), "status": "not in this sdcli"})
        elif self.cuda():
            s = Spec("options:offload", label, lambda i: [self.sdcli_gen(str(self.out(f"opt-offload-{i}")), *flags)],
                     " ".join(flags))
            self.alternate([s], a.options_runs)
            rows.append({**s.as_json(), "flags": s.shown, "ratio_to_plain": ratio(s, plain)})
        else:
            s = Spec("options:offload", label, lambda i: [self.sdcli_gen(str(self.out("opt-offload")), *flags)],
                     " ".join(flags), expect_rc=2)
            log("options: --offload model on a CPU machine (expect exit 2, one error line)")
            self.alternate([s], 1, guard=False)
            r = s.runs[0]
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("sdcli: error:")]
            clear = r.rc == 2 and len(errors) == 1 and "Traceback" not in r.stderr and "cuda" in errors[0].lower()
            offload = {"label": label, "flags": s.shown, "rc": r.rc, "seconds": round(r.seconds, 3),
                       "error_lines": errors, "stderr_lines": len(lines), "clear_error": clear}
            if not clear:
                self.failures.append(f"--offload model on CPU: expected exit 2 and one 'sdcli: error:' line naming CUDA; "
                                     f"got exit {r.rc}: {tail(r.stderr, 300)}")
        return {"runs": a.options_runs, "rows": rows, "missing": missing, "offload_cpu": offload}

    _cuda: Optional[bool] = None

    def cuda(self) -> bool:
        if self._cuda is None:
            dev = getattr(self, "device", None)
            if dev is not None:
                self._cuda = dev.startswith("cuda")
            else:
                r = run_once([PYTHON, "-c", "import torch; print(torch.cuda.is_available())"], self.env, 120)
                self._cuda = r.stdout.strip() == "True"
        return self._cuda


# --- helpers --------------------------------------------------------------------------------------------

def child_env(smoke: bool) -> dict:
    env = dict(os.environ)
    # Both cores for torch, in every child alike. The smoke run (CI, tests) keeps a thread limit the caller
    # set, as tests share the machine.
    if not smoke:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    env.pop("SDCLI_DEBUG", None)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def display_path(p: str) -> str:
    try:
        return os.path.relpath(p, ROOT) if not os.path.relpath(p, ROOT).startswith("../..") else p
    except ValueError:
        return p


def dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def ratio(a: Spec, b: Spec) -> Optional[float]:
    if not a.runs or not b.runs or not b.median():
        return None
    return round(a.median() / b.median(), 4)


def paired(a: Spec, b: Spec) -> list[float]:
    """Per-round ratios a_i / b_i (the two ran next to each other)."""
    return [round(x / y, 4) for x, y in zip(a.seconds(), b.seconds()) if y]


def parse_float(rx: re.Pattern, text: str) -> Optional[float]:
    m = rx.search(text or "")
    return float(m.group(1)) if m else None


def compare(a: Path, b: Path) -> dict:
    """Identical pixels? Max absolute difference of two images (0..255)."""
    if not a.is_file() or not b.is_file():
        return {"identical": None, "max_abs_diff": None, "note": f"missing {a.name if not a.is_file() else b.name}"}
    import numpy as np
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        x = np.asarray(ia.convert("RGB"), dtype=np.int16)
        y = np.asarray(ib.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"identical": False, "max_abs_diff": None, "note": f"sizes differ {x.shape} vs {y.shape}"}
    d = np.abs(x - y)
    return {"identical": bool(d.max() == 0), "max_abs_diff": int(d.max()), "mean_abs_diff": round(float(d.mean()), 4)}


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "os": platform.platform(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
        cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S)}
        info["physical_cores"] = len(cores) or None
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if m:
            have = set(m.group(1).split())
            info["flags"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in have]
    except OSError:
        pass
    try:
        import psutil

        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:
        m = re.search(r"MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text())
        info["ram_bytes"] = int(m.group(1)) * 1024 if m else None
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        info["gpus"] = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "sdcli", "huggingface_hub", "accelerate", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_commit() -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        head = r.stdout.strip() or None
        d = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
        return head and head + ("+local changes" if d.stdout.strip() else "")
    except OSError:
        return None


# --- report ---------------------------------------------------------------------------------------------

def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_range(xs: list[float]) -> str:
    return f"{fmt_s(min(xs))} / {fmt_s(max(xs))}" if xs else "n/a"


def fmt_mib(kib) -> str:
    if not kib:
        return "n/a"
    if isinstance(kib, list):
        kib = statistics.median(kib)
    return f"{kib / 1024:,.0f} MiB"


def fmt_gib(b: Optional[int]) -> str:
    return f"{b / 2**30:.2f} GiB" if b else "n/a"


def fmt_x(r: Optional[float]) -> str:
    return f"{r:.3f}x" if r is not None else "n/a"


def verdict(value: Optional[float], target: float) -> str:
    if value is None:
        return "n/a"
    return "yes" if value <= target else "**no**"


def fmt_pixels(p: Optional[dict]) -> str:
    if not p:
        return "n/a"
    if p.get("identical") is None:
        return f"n/a ({p.get('note')})"
    return "identical" if p["identical"] else f"max abs diff {p['max_abs_diff']} (mean {p.get('mean_abs_diff')})"


def cell(row: dict) -> str:
    rc = row.get("rc") or []
    bad = [c for c in rc if c != row.get("expect_rc", 0)]
    return "" if not bad else f" (**exit {bad[0]}**)"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return lines


def code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def report(res: dict) -> str:
    m, v, s = res["machine"], res["versions"], res["sections"]
    L = ["# Benchmarks", "",
         f"Written by `make bench` (`benchmarks/bench.py {' '.join(res['argv'])}`) on {res['date']}"
         + (f", sdcli at commit {res['commit']}" if res.get("commit") else "") + f"; took {res['elapsed_s'] / 60:.1f} min.",
         "",
         "Every number is a whole process (what a shell script or cron job pays: interpreter start, imports, model "
         "load, generation, writing the files), timed with `time.perf_counter` around `subprocess.Popen` + "
         "`os.wait4`; peak RSS is the child's `ru_maxrss`. The commands of a section ran **alternated** (A B C, A B "
         "C, ...), so other load on the machine hit them alike; ratios are between medians of the same run "
         "(`paired` = the per-round ratios). All children had one identical environment: "
         + ("OMP_NUM_THREADS as the caller set it (smoke run)" if res["smoke"] else "OMP_NUM_THREADS unset (torch uses every core)")
         + ", `HF_HUB_OFFLINE=1`, `TRANSFORMERS_VERBOSITY=error`.", ""]
    st = res.get("settings", {})
    if st.get("max_noise"):
        L += [f"Noise guard (a shared machine): before each model run the harness waited for the other processes to "
              f"use at most {st['max_noise']} cores (up to {st.get('wait_quiet', 0):.0f}s; "
              f"{res.get('waited_quiet_s', 0):.0f}s waited in all), and a run during which they used more was "
              f"discarded and run again (up to {st.get('retries')} times; the discarded times are in the JSON).", ""]
    if res.get("model"):
        L += [f"`$MODEL` = `{res['model']}` ({fmt_gib(res.get('model_bytes'))} on disk): "
              + ("sdcli's built-in tiny random-weight txt2img model (smoke run: the numbers measure the harness, not SD)."
                 if res["smoke"] else
                 "the full-size Stable Diffusion 1.5 architecture with random weights (`benchmarks/build_sd15.py`: "
                 "UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M parameters, full ViT-L/14 safety checker; fp32). "
                 "Random weights cost the same compute and memory as the real ones."),
              "`$OUT` = a fresh temporary folder; `-N` is the run number.", ""]
    if res.get("load_avg"):
        la = res["load_avg"]
        L += [f"Load average (1 min) before / after: {la[0]:.2f} / {la[1]:.2f}.", ""]
    L += ["## Machine", ""]
    L += table(["CPU", "cores", "RAM", "OS", "SIMD"], [[
        m.get("cpu"), f"{m.get('logical_cpus')} logical" + (f", {m['physical_cores']} physical" if m.get("physical_cores") else ""),
        fmt_gib(m.get("ram_bytes")), m.get("os"), ", ".join(m.get("flags") or []) or "n/a"]])
    L += [""]
    if res.get("cuda"):
        L += [f"GPU: {', '.join(m.get('gpus') or ['CUDA available'])}; runs used device `{res.get('device')}`.", ""]
    else:
        L += ["**No GPU was measured**: " + ("torch.cuda.is_available() is False here; " if res.get("cuda") is False else "")
              + "every number below is the CPU in fp32 (unless a row says otherwise).", ""]
    L += ["## Versions", ""]
    L += table(["python", "torch", "diffusers", "transformers", "sdcli"],
               [[v.get("python"), v.get("torch"), v.get("diffusers"), v.get("transformers"), v.get("sdcli")]])
    L += [""]

    if "startup" in s:
        st = s["startup"]
        L += ["## Startup", "",
              f"Commands that never need torch, against a bare `python -c \"import typer\"`; {runs_text(st['runs'])} each, "
              "alternated. Target: at most 1.5x `import typer`.", ""]
        rows = []
        for r in st["rows"]:
            rows.append([r["label"], code(r["command"]) + cell(r), fmt_s(r["median_s"]), fmt_range(r["seconds"]),
                         fmt_x(r["ratio_to_import_typer"]), "(baseline)" if r["target"] is None else verdict(r["ratio_to_import_typer"], r["target"]),
                         fmt_mib(r["rss_kib"])])
        L += table(["what", "command", "median s", "min / max s", "ratio to import typer", "<= 1.5x", "peak RSS"], rows)
        L += [""]

    if "overhead" in s:
        o = s["overhead"]
        rows = []
        for r in o["rows"]:
            extra = []
            if r.get("added_s_vs_sdcli") is not None:
                extra.append(f"+{r['added_s_vs_sdcli']:.2f}s vs sdcli" if r["added_s_vs_sdcli"] >= 0
                             else f"{r['added_s_vs_sdcli']:.2f}s vs sdcli")
            if r.get("discarded_noisy_s"):
                extra.append(f"{len(r['discarded_noisy_s'])} noisy run(s) repeated")
            loads = [x for x in (r.get("sdcli_load_s") or []) if x is not None]
            if loads:
                extra.append(f"model load (sdcli's log) {statistics.median(loads):.1f}s")
            rows.append([r["label"], code(r["command"]) + cell(r), fmt_s(r["median_s"]), fmt_range(r["seconds"]),
                         fmt_x(r["ratio_to_reference"]), ", ".join(f"{x:.3f}" for x in r["paired_ratios"]),
                         fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"]), "; ".join(extra)])
        L += ["## Overhead: sdcli vs the ten-line diffusers script", "",
              f"One image, {o['steps']} DDIM steps, {o['size']}x{o['size']}, seed 42, guidance 7.5, fp32; "
              f"{runs_text(o['runs'])} each, alternated. `benchmarks/reference.py` is the plain diffusers script "
              "(StableDiffusionPipeline, DDIM with clip_sample off, a seeded CPU generator, save the PNG). "
              "Target: sdcli / reference <= 1.03. " + NOISE_NOTE, ""]
        L += table(["what", "command", "median s", "min / max s", "ratio to reference", "paired", "CPU s", "others' CPU s",
                    "peak RSS", "notes"], rows)
        px = o.get("pixels") or {}
        L += ["",
              f"- **sdcli / reference (median): {fmt_x(o['ratio'])}** (target <= 1.03: {verdict(o['ratio'], 1.03)}); "
              f"median of the paired ratios {fmt_x(paired_median(o))}.",
              f"- Same pixels as the reference: **{'yes' if px.get('identical') else 'no' if px.get('identical') is False else 'n/a'}** "
              f"({fmt_pixels(px)}).",
              ]
        if o.get("repeat_pixels"):
            L += [f"- sdcli run 1 vs run 2: {fmt_pixels(o['repeat_pixels'])}."]
        added = {r["label"]: r.get("added_s_vs_sdcli") for r in o["rows"]}
        L += [f"- Safety checker on: {fmt_added(added.get('sdcli + safety checker'))}; watermark on: "
              f"{fmt_added(added.get('sdcli + watermark'))} (medians vs the run with both off)."
              + (" The random-weight checker flagged the image (replaced by black); that costs nothing extra."
                 if o.get("safety_flagged") else "")]
        if o["size"] * o["size"] < 256 * 256:
            L += ["- Under 256x256 the watermark is skipped (the library refuses), so its row measures nothing extra."]
        L += [""]

    if "memory" in s:
        mm = s["memory"]
        L += ["## Memory", "",
              f"Peak RSS of the whole process (from the {mm['measured_in']} runs), against the size of the weights it "
              "loads (fp32 safetensors on disk). A ratio well under 2 means loading does not hold two copies of the "
              f"weights. The model folder holds {fmt_gib(mm['model_bytes'])} on disk ("
              + ", ".join(f"{k} {fmt_gib(b)}" for k, b in mm["weights_bytes"].items()) + ").", ""]
        rows = [[r["label"], code(r["command"]) + cell(r), fmt_mib(r["rss_kib"]),
                 f"{fmt_mib(min(r['rss_kib']))} / {fmt_mib(max(r['rss_kib']))}" if r["rss_kib"] else "n/a",
                 fmt_gib(r["weights_loaded_bytes"]), fmt_x(r["rss_over_weights"])] for r in mm["rows"]]
        L += table(["process", "command", "peak RSS (median)", "min / max", "weights loaded", "RSS / weights"], rows)
        L += [""]

    if "batch" in s:
        b = s["batch"]
        L += ["## Batch: one run with a prompt file vs one run per prompt", "",
              f"{b['prompts']} different prompts (`$OUT/prompts.txt`, one per line), same settings as the overhead "
              f"section; {runs_text(b['runs'])} each, alternated. The single runs use `--seed 42+K` so that every image "
              "is the batch's image K. " + NOISE_NOTE, ""]
        rows = [[r["label"], code(r["command"]) + cell(r), fmt_s(r["median_s"]), fmt_range(r["seconds"]),
                 fmt_s(r["per_image_s"]), fmt_x(r["ratio_to_singles"]), fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"])]
                for r in b["rows"]]
        L += table(["what", "command", "median s", "min / max s", "per image s", "ratio to singles", "CPU s",
                    "others' CPU s", "peak RSS"], rows)
        L += ["", f"- Image 0, batch of {b['prompts']} vs its single run: {fmt_pixels(b.get('pixels_batch_vs_single'))} "
              "(batched math may round differently).", ""]

    if "options" in s:
        op = s["options"]
        L += ["## Options", "",
              f"The overhead section's sdcli command (`--no-safety-checker --no-watermark`) with one option added, "
              f"all alternated with the plain command; {runs_text(op['runs'])} each. Image: max abs pixel difference to the "
              "plain run's PNG. " + NOISE_NOTE, ""]
        rows = []
        for r in op["rows"]:
            notes = []
            if "compile_s" in r:
                cs = [x for x in r["compile_s"] if x is not None]
                notes.append(f"compile {statistics.median(cs):.1f}s (sdcli's log)" if cs else "compile time n/a")
                if cs and len(cs) == len(r["seconds"]):
                    rest = statistics.median(t - c for t, c in zip(r["seconds"], r["compile_s"]))
                    plain_median = op["rows"][0]["median_s"]
                    notes.append(f"without the compile {fmt_s(rest)}s ({fmt_x(rest / plain_median)} plain)")
            rows.append([r["label"], code(r["flags"]) if r["flags"] else "(plain)", fmt_s(r["median_s"]) + cell(r),
                         fmt_range(r["seconds"]), fmt_x(r["ratio_to_plain"]), fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"]),
                         fmt_pixels(r.get("pixels_vs_plain")) if r["flags"] else "(reference)", "; ".join(notes)])
        off = op.get("offload_cpu")
        if off:
            msg = off["error_lines"][0] if off["error_lines"] else f"exit {off['rc']}"
            rows.append([off["label"], code(off["flags"]), f"{fmt_s(off['seconds'])} (exit {off['rc']})", "", "", "", "", "",
                         "", ("CUDA only: clear error: " if off["clear_error"] else "**not a clear error**: ") + code(msg)])
        for mi in op.get("missing", []):
            rows.append([mi["label"], code(mi["flags"]), "not measured", "", "", "", "", "", "", "this sdcli has no such option"])
        L += table(["option", "flags", "median s", "min / max s", "ratio to plain", "CPU s", "others' CPU s", "peak RSS",
                    "image vs plain", "notes"], rows)
        L += [""]
    if res.get("failures"):
        L += ["## Unexpected exits", ""] + [f"- {code(f)}" for f in res["failures"]] + [""]
    L += [f"Raw numbers: `{res['json_path']}`."]
    return "\n".join(L) + "\n"


NOISE_NOTE = ("`CPU s`: the child's user+system CPU time (median); `others' CPU s`: CPU seconds the rest of the "
              "machine used while it ran (median / max; near 0 = a quiet machine).")


def fmt_cpu(row: dict) -> str:
    xs = row.get("cpu_s") or []
    return fmt_s(statistics.median(xs)) if xs else "n/a"


def fmt_noise(row: dict) -> str:
    xs = [x for x in row.get("other_cpu_s") or [] if x is not None]
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "n/a"


def paired_median(o: dict) -> Optional[float]:
    xs = next((r["paired_ratios"] for r in o["rows"] if r["label"] == "sdcli"), None)
    return statistics.median(xs) if xs else None


def runs_text(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def fmt_added(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:+.2f}s"


# --- main -----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="sdcli benchmarks -> BENCHMARKS.md", epilog=f"sections: {', '.join(SECTIONS)}")
    ap.add_argument("--only", help="comma-separated sections to run [all]")
    ap.add_argument("--runs", type=int, default=None, help="runs per command for overhead, memory, options [3]")
    ap.add_argument("--options-runs", type=int, default=None, help="runs per command for options [--runs]")
    ap.add_argument("--startup-runs", type=int, default=None, help="runs per command for startup [10]")
    ap.add_argument("--batch-runs", type=int, default=None, help="runs per way for batch [1]")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps [4; smoke 2]")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels [256; smoke 64]")
    ap.add_argument("--model", help="diffusers model folder [full-size SD 1.5 random weights, built once; smoke: tiny]")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64 px, 2 steps, 1 run each (CI)")
    ap.add_argument("--output", help="markdown report [BENCHMARKS.md at the repo root]")
    ap.add_argument("--json", help="raw numbers [benchmarks/results.json; with --output: beside it, .json]")
    ap.add_argument("--timeout", type=float, default=1800, help="kill a command after this many seconds [1800]")
    ap.add_argument("--max-noise", type=float, default=None,
                    help="discard and repeat a run during which other processes used more than this many cores "
                         "(0 = keep every run) [0.1; smoke 0]")
    ap.add_argument("--retries", type=int, default=3, help="repeats of a noisy run [3]")
    ap.add_argument("--wait-quiet", type=float, default=300,
                    help="before each run, wait up to this many seconds for other processes to use <= --max-noise cores [300]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown (--output) from a results JSON")
    a = ap.parse_args(argv)
    one = 1 if a.smoke else None
    a.runs = a.runs or one or 3
    a.startup_runs = a.startup_runs or one or 10
    a.options_runs = a.options_runs or a.runs
    a.batch_runs = a.batch_runs or 1
    a.steps = a.steps or (2 if a.smoke else 4)
    a.size = a.size or (64 if a.smoke else 256)
    if a.max_noise is None:
        a.max_noise = 0.0 if a.smoke else 0.1
    a.sections = SECTIONS if not a.only else tuple(x.strip() for x in a.only.split(",") if x.strip())
    unknown = [x for x in a.sections if x not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if a.size % 8:
        ap.error("--size: must be a multiple of 8")
    a.output = Path(a.output).expanduser() if a.output else ROOT / "BENCHMARKS.md"
    a.json = Path(a.json).expanduser() if a.json else (a.output.with_suffix(".json") if a.output != ROOT / "BENCHMARKS.md"
                                                       else HERE / "results.json")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        args.output.write_text(report(res))
        log(f"wrote {args.output} from {args.render}")
        return 0
    t0 = time.perf_counter()
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # so the running child is killed too (run_once)
    if not Path(SDCLI).exists():
        raise SystemExit(f"bench: no sdcli console script beside {sys.executable}; run `make install` and use the venv's python")
    bench = Bench(args)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res = {"argv": sys.argv[1:] if argv is None else list(argv), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "commit": git_commit(), "smoke": args.smoke, "machine": machine(), "versions": versions(),
           "settings": {"runs": args.runs, "options_runs": args.options_runs, "startup_runs": args.startup_runs, "batch_runs": args.batch_runs,
                        "steps": args.steps, "size": args.size, "sections": list(args.sections),
                        "max_noise": args.max_noise, "retries": args.retries, "wait_quiet": args.wait_quiet},
           "sections": {}}
    try:
        for name in SECTIONS:
            if name in args.sections:
                res["sections"][name] = getattr(bench, name)()
    finally:
        if not args.keep:
            shutil.rmtree(bench.tmp, ignore_errors=True)
        else:
            log(f"outputs kept in {bench.tmp}")
    if bench.model:
        res["model"] = bench.model
        res["model_bytes"] = dir_size(Path(bench.model))
        res["cuda"] = bench.cuda()
        res["device"] = getattr(bench, "device", None)
    else:
        res["cuda"] = None
        try:
            res["cuda"] = bool(res["machine"].get("gpus")) or None
        except Exception:
            pass
    res["load_avg"] = [load0, os.getloadavg()[0]] if load0 is not None else None
    res["failures"] = bench.failures
    res["waited_quiet_s"] = round(bench.waited_s, 1)
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    res["json_path"] = display_path(str(args.json.resolve()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.output.write_text(report(res))
    log(f"wrote {args.output} and {args.json} in {res['elapsed_s']:.0f}s")
    if bench.failures:
        log("unexpected exits:\n  " + "\n  ".join(bench.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
