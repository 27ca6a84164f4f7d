"""What the sections measure with: the model (found or built, read once into the page cache), the temporary
output folder, the commands (sdcli txt2img, the reference script) and how the report spells them, and the facts
one section leaves for the next (the overhead section's Specs and the device sdcli used)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .harness import Runner, Spec, log, run_once
from .paths import HERE, PYTHON, REFERENCE, ROOT, SDCLI, dir_size, display_path

PROMPT = "a photograph of an astronaut riding a horse"
REFERENCE_LABEL = "reference (diffusers script)"


class Bench(Runner):
    def __init__(self, args):
        super().__init__(args)
        self.tmp = Path(tempfile.mkdtemp(prefix="sdcli-bench-"))
        self.model: Optional[str] = None
        self.cached = False
        self.overhead_specs: Optional[dict[str, Spec]] = None  # set by the overhead section, reused by memory
        self.device: Optional[str] = None  # the device sdcli reported (overhead section)
        self._cuda: Optional[bool] = None
        self.results: Optional[dict] = None  # the sections measured so far in this run (main.py)

    def out(self, name: str) -> Path:
        return self.tmp / name

    # the model
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

    def cuda(self) -> bool:
        if self._cuda is None:
            if self.device is not None:
                self._cuda = self.device.startswith("cuda")
            else:
                r = run_once([PYTHON, "-c", "import torch; print(torch.cuda.is_available())"], self.env, 120)
                self._cuda = r.stdout.strip() == "True"
        return self._cuda

    # the commands
    def sdcli_gen(self, outdir: str, *extra: str, prompt: str = PROMPT, seed: int = 42,
                  safety: bool = False, watermark: bool = False) -> list[str]:
        a = self.args
        return [SDCLI, "txt2img", "--model", self.model, "--prompt", prompt, "--steps", str(a.steps),
                "--H", str(a.size), "--W", str(a.size), "--n_samples", "1", "--n_iter", "1", "--seed", str(seed),
                "--scheduler", "ddim", "--safety-checker" if safety else "--no-safety-checker",
                "--watermark" if watermark else "--no-watermark", "--skip-grid", "--outdir", outdir,
                *([] if "--precision" in extra else ["--precision", "fp32"]),  # fp32 and torch, as the script
                *([] if "--backend" in extra else ["--backend", "torch"]), *extra]

    def reference(self, out_png: str) -> list[str]:
        a = self.args
        return [PYTHON, REFERENCE, self.model, PROMPT, str(a.steps), str(a.size), str(a.size), "42", "ddim", out_png]

    def sdcli_spec(self, key: str, label: str, name: str, *extra: str, shown: Optional[str] = None, **kw) -> Spec:
        """One sdcli txt2img per run, into $OUT/NAME-N; shown as the command of run 0 unless ``shown``."""
        def cmd(i: int) -> list[str]:
            return self.sdcli_gen(str(self.out(f"{name}-{i}")), *extra, **kw)

        return Spec(key, label, lambda i: [cmd(i)], self.show(cmd(0)) if shown is None else shown)

    def reference_spec(self, key: str, name: str) -> Spec:
        """One reference.py run per run, writing $OUT/NAME-N.png."""
        def cmd(i: int) -> list[str]:
            return self.reference(str(self.out(f"{name}-{i}.png")))

        return Spec(key, REFERENCE_LABEL, lambda i: [cmd(i)], self.show(cmd(0)))

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
