"""Training checkpoints without pickles: the trained tensors and the optimizer's moments as safetensors, the
optimizer's hyper-parameters, the step and the run's fingerprint as JSON. Written to a temporary folder and
renamed, so a kill leaves the last complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def save(work: Path, name: str, method, optimizer, step: int, fingerprint: dict) -> Path:
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    final = work / name
    tmp = work / f".tmp-{os.getpid()}-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in method.trainable().items()}, str(tmp / "trainable.safetensors"))
    tensors, groups = _flatten(optimizer.state_dict(), method.optimizer_rows())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "param_groups": groups}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load(path: Path, method, optimizer) -> None:
    from safetensors.torch import load_file

    method.load_trainable(load_file(str(path / "trainable.safetensors")))
    state = json.loads((path / "state.json").read_text())
    shapes = [tuple(p.shape) for p in method.params()]  # the optimizer's one group, in this order
    optimizer.load_state_dict(_unflatten(load_file(str(path / "optimizer.safetensors")), state["param_groups"],
                                         shapes, method.optimizer_rows()))


def _flatten(state: dict, rows) -> tuple[dict, list]:
    """{"state": {i: {name: tensor}}, "param_groups": [...]} -> tensors "i.name" (only ``rows`` of the first
    dimension when given: textual inversion's new rows) and the groups as JSON."""
    import torch

    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            if rows is not None and value.dim() > 0:
                value = value[rows]
            tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _unflatten(tensors: dict, groups: list, shapes: list, rows) -> dict:
    """The inverse: with ``rows``, each moment goes back into a zero tensor of its parameter's full shape (the
    other rows' moments never matter: those rows are put back after every step)."""
    import torch

    state: dict = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        if rows is not None and value.dim() > 0:
            whole = torch.zeros(shapes[int(index)], dtype=value.dtype)
            whole[rows] = value
            value = whole
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}
