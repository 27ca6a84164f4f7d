"""The markdown page (BENCHMARKS.md) from a results dict: the method, the machine and versions, then each
section's own rendering, the unexpected exits and where the raw numbers are."""

from __future__ import annotations

from .markdown import code, fmt_gib, table
from .sections import SECTIONS


def report(res: dict) -> str:
    L = _preamble(res)
    for name, sec in SECTIONS.items():
        if name in res["sections"]:
            L += sec.render(res["sections"][name])
    if res.get("failures"):
        L += ["## Unexpected exits", ""] + [f"- {code(f)}" for f in res["failures"]] + [""]
    L += [f"Raw numbers: `{res['json_path']}`."]
    return "\n".join(L) + "\n"


def _preamble(res: dict) -> list[str]:
    m, v = res["machine"], res["versions"]
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
    return L + [""]
