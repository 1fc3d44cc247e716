"""A training run's resumable state: ``DIR/state/``, replaced as a whole.

``save_state`` writes the learner (every torch module, optimizer and tensor
attribute, found by looking at the learner, so a new algorithm needs nothing
here), the replay buffer's episodes (``.npz``, no pickle) and the loop's
progress (JSON) into a temporary directory and swaps it in with
``fsutil.replace_dir``: a kill leaves the previous complete state or the new
one.  ``load_state`` restores them in place (optimizers keep pointing at the
same parameters).  Tensors are read back with ``torch.load(weights_only=True)``:
plain tensors and containers, never arbitrary objects.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.fsutil import existing_dir, replace_dir

STATE_DIR = "state"
FORMAT = 1


class ResumeError(ValueError):
    """No usable state to resume from; the message names the directory and the problem."""


def _learner_parts(learner: Any) -> dict[str, Any]:
    import torch

    parts = {}
    for name, v in vars(learner).items():
        if isinstance(v, (torch.nn.Module, torch.optim.Optimizer)) or \
                isinstance(v, torch.Tensor):
            parts[name] = v
    return parts


def _scalars(learner: Any) -> dict[str, int | float]:
    return {k: v for k, v in vars(learner).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _save_replay(path: Path, eps: list[Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    scalars = []
    for i, ep in enumerate(eps):
        row = {}
        for f in fields(ep):
            v = getattr(ep, f.name)
            if isinstance(v, np.ndarray):
                arrays[f"{i}.{f.name}"] = v
            else:
                row[f.name] = v
        scalars.append(row)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    (path.with_suffix(".json")).write_text(json.dumps(scalars))


def _load_replay(path: Path, episode_cls: Any) -> list[Any]:
    scalars = json.loads(path.with_suffix(".json").read_text())
    out = []
    with np.load(path, allow_pickle=False) as z:
        for i, row in enumerate(scalars):
            kw = dict(row)
            for f in fields(episode_cls):
                if f.name not in kw:
                    kw[f.name] = z[f"{i}.{f.name}"]
            out.append(episode_cls(**kw))
    return out


def save_state(out: Path, learner: Any, replay: Any, progress: dict[str, Any]) -> Path:
    """Write ``out/state`` as a whole; OutputError (old state intact) if it cannot."""
    import torch

    def fill(tmp: Path) -> None:
        torch.save({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v.state_dict())
                    for k, v in _learner_parts(learner).items()}, tmp / "learner.pt")
        _save_replay(tmp / "replay.npz", list(replay.eps))
        state = {"format": FORMAT, "learner_scalars": _scalars(learner),
                 "torch_rng": torch.get_rng_state().tolist(), **progress}
        (tmp / "progress.json").write_text(json.dumps(state, indent=1) + "\n")

    return replace_dir(out / STATE_DIR, fill)


def read_progress(out: Path) -> dict[str, Any]:
    """The saved progress of ``out`` (ResumeError when there is none)."""
    d = existing_dir(out / STATE_DIR)
    if d is None:
        raise ResumeError(f"--resume {out}: no saved state ({out / STATE_DIR} missing; "
                          "a run saves it every --state-every minutes and on Ctrl-C)")
    try:
        prog = json.loads((d / "progress.json").read_text())
    except (OSError, ValueError) as e:
        raise ResumeError(f"--resume {out}: unreadable {d / 'progress.json'}: {e}") from None
    if not isinstance(prog, dict) or prog.get("format") != FORMAT:
        raise ResumeError(f"--resume {out}: {d / 'progress.json'} is not a format-{FORMAT} "
                          "training state")
    prog["_dir"] = str(d)
    return prog


def load_state(prog: dict[str, Any], learner: Any, replay: Any, episode_cls: Any) -> None:
    """Restore the learner and replay saved with ``prog`` (from ``read_progress``)."""
    import torch

    d = Path(prog["_dir"])
    try:
        saved = torch.load(d / "learner.pt", weights_only=True)
        for k, v in _learner_parts(learner).items():
            if k not in saved:
                raise ResumeError(f"--resume: {d / 'learner.pt'} has no {k!r} "
                                  "(another algorithm?)")
            if isinstance(v, torch.Tensor):
                with torch.no_grad():
                    v.copy_(saved[k])
            else:
                v.load_state_dict(saved[k])
        for k, v in prog.get("learner_scalars", {}).items():
            setattr(learner, k, v)
        torch.set_rng_state(torch.tensor(prog["torch_rng"], dtype=torch.uint8))
        replay.eps = _load_replay(d / "replay.npz", episode_cls)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, ResumeError):
            raise
        raise ResumeError(f"--resume: cannot restore {d}: {e}") from None
