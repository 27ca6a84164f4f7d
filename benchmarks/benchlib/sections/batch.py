"""Batch: 8 prompts from a file in one run (--n_samples 8, and 4) against 8 single-prompt runs."""

from __future__ import annotations

from ..context import Bench
from ..harness import Spec, log, ratio
from ..markdown import NOISE_NOTE, command_cells, fmt_cpu, fmt_mib, fmt_noise, fmt_pixels, fmt_s, fmt_x, runs_text, section
from ..pixels import compare, sample

NAME = "batch"
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


def measure(bench: Bench) -> dict:
    bench.ensure_model()
    bench.warm_cache()
    a = bench.args
    n = len(BATCH_PROMPTS)
    pfile = bench.out("prompts.txt")
    pfile.write_text("\n".join(BATCH_PROMPTS) + "\n")

    def batched(i: int, size: int, name: str) -> list[str]:
        cmd = bench.sdcli_gen(str(bench.out(f"{name}-{i}")), "--from-file", str(pfile))
        cmd[cmd.index("--n_samples") + 1] = str(size)
        del cmd[cmd.index("--prompt"):cmd.index("--prompt") + 2]
        return cmd

    def singles(i: int) -> list[list[str]]:
        return [bench.sdcli_gen(str(bench.out(f"single-{i}-{k}")), prompt=p, seed=42 + k)
                for k, p in enumerate(BATCH_PROMPTS)]

    specs = [
        Spec("batch:8", f"one run, --n_samples {n}", lambda i: [batched(i, n, "batch8")], bench.show(batched(0, n, "batch8"))),
        Spec("batch:4", f"one run, --n_samples {n // 2}", lambda i: [batched(i, n // 2, "batch4")],
             bench.show(batched(0, n // 2, "batch4"))),
        Spec("batch:singles", f"{n} single-prompt runs (total)", singles,
             f"{n} x " + bench.show(bench.sdcli_gen(str(bench.out("single-0-K")), prompt="PROMPT_K", seed=42))
             .replace("'PROMPT_K'", "PROMPT_K").replace("--seed 42", "--seed 42+K")),
    ]
    log(f"batch: {n} prompts, 3 ways x {a.batch_runs} runs, alternated")
    bench.alternate(specs, a.batch_runs)
    single = specs[2]
    rows = []
    for s in specs:
        rows.append({**s.as_json(), "ratio_to_singles": ratio(s, single),
                     "per_image_s": round(s.median() / n, 3) if s.runs else None})
    diff = compare(sample(bench.out("batch8-0")), sample(bench.out("single-0-0")))
    return {"runs": a.batch_runs, "prompts": n, "rows": rows, "pixels_batch_vs_single": diff}


def render(b: dict) -> list[str]:
    rows = [command_cells(r) + [fmt_s(r["per_image_s"]), fmt_x(r["ratio_to_singles"]), fmt_cpu(r), fmt_noise(r),
                                fmt_mib(r["rss_kib"])]
            for r in b["rows"]]
    L = section("Batch: one run with a prompt file vs one run per prompt",
                f"{b['prompts']} different prompts (`$OUT/prompts.txt`, one per line), same settings as the overhead "
                f"section; {runs_text(b['runs'])} each, alternated. The single runs use `--seed 42+K` so that every "
                "image is the batch's image K. " + NOISE_NOTE,
                ["what", "command", "median s", "min / max s", "per image s", "ratio to singles", "CPU s",
                 "others' CPU s", "peak RSS"], rows)
    return L + [f"- Image 0, batch of {b['prompts']} vs its single run: {fmt_pixels(b.get('pixels_batch_vs_single'))} "
                "(batched math may round differently).", ""]
