"""Resume state: written atomically, kept in rotation, found again after any kill.

Layout (default `OUTPUT_DIR/checkpoints/`):

    latest                       name of the newest complete checkpoint (written last)
    step-00000040/
      ds/                        DeepSpeed checkpoint, frozen weights excluded
                                 (model states + each rank's ZeRO optimizer partition)
      rank-00000.pt ...          one per rank: its data-stream position and RNG states
      portable.pt                the trainable weights and Adam moments as full tensors, the step and
                                 schedule (`checkpoint.portable`): resume on another number of ranks
      trainer_state.json         step, world size, MLflow run id, metrics, evaluations so far, the job as
                                 written (`config`) and its training hash (`config_sha256`,
                                 `trainer.run.training_hash`): what a resume compares against
      MANIFEST.json              every file above with its size and sha256 (written last, by rank 0)
    .tmp-step-00000050/          a write in progress (or killed): never resumed from

Write protocol (all ranks): rank 0 makes `.tmp-step-N/`; DeepSpeed and every
rank write into it; barrier; rank 0 writes trainer_state.json, fsyncs, writes
MANIFEST.json, renames the directory to `step-N`, then replaces `latest`, then
prunes old checkpoints. A kill at any point leaves either the previous
checkpoints untouched plus a `.tmp-*` directory, or a complete `step-N`.

DeepSpeed's own `client_state` is written by one rank only, so per-rank state
(each rank's position in its share of the data, its RNG streams) goes into
the `rank-*.pt` files instead.

Resume (`checkpoint.resume`): `auto` takes the newest complete checkpoint in the
directory (complete = MANIFEST.json present and every file in it present with
its size and sha256); each newer incomplete or corrupt one is skipped with a warning naming
it and the file at fault. `none` starts fresh; any other value is a checkpoint directory that must be
complete. All ranks use rank 0's choice.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from trainer import distributed, faults
from trainer.config import CheckpointConfig
from trainer.errors import ResumeError, on_every_rank
from trainer.fsutil import replace_dir, sha256_file, write_atomic

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
LATEST = "latest"
PORTABLE = "portable.pt"   # the trainable state independent of the number of ranks (`Engine.portable_state`)
DS_TAG = "ds"
STEP_RE = re.compile(r"^step-(\d+)$")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(ckpt: Path) -> dict[str, dict]:
    """Fsync every file under `ckpt`, then record name -> {size, sha256} in MANIFEST.json (atomically, last)."""
    files: dict[str, dict] = {}
    for path in sorted(ckpt.rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            _fsync_file(path)
            files[str(path.relative_to(ckpt))] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    for d in [ckpt, *[p for p in ckpt.rglob("*") if p.is_dir()]]:
        _fsync_dir(d)
    write_atomic(ckpt / MANIFEST, json.dumps({"files": files}, indent=1))
    return files


def check_complete(ckpt: Path, verify: bool = False) -> str | None:
    """None if `ckpt` is a complete checkpoint, else why not (naming the file).

    Complete: the manifest is there and every file in it has its size; with `verify`, also its
    sha256 (what a resume checks; rotation checks sizes only). Manifests written before checksums
    were recorded hold sizes only.
    """
    if not ckpt.is_dir():
        return "not a directory"
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the write did not finish)"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST}: {e}"
    for name, entry in files.items():
        size, digest = (entry, None) if isinstance(entry, int) else (entry["size"], entry.get("sha256"))
        path = ckpt / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if verify and digest is not None and sha256_file(path) != digest:
            return f"{name} does not match its sha256 in {MANIFEST} (corrupt)"
    try:
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        world = int(state["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {TRAINER_STATE}: {e}"
    absent = [rank_file(r) for r in range(world) if rank_file(r) not in files]
    if absent:
        return f"no per-rank state {', '.join(absent)}"
    return None


# numpy's RNG state (a uint32 array) in each rank file: the only objects beyond tensors and plain values (the
# array's constructor under numpy 2's name and under numpy 1's, which files written with numpy 1 name)
_reconstruct = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct
NUMPY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct,
                 (_reconstruct, "numpy.core.multiarray._reconstruct")]


def load_own(path: Path) -> Any:
    """A file this module wrote (`rank-N.pt`, `portable.pt`), loaded with `weights_only=True`: tensors, plain values
    and numpy arrays only, so a crafted file cannot run code (docs/errors.md, "Trusted inputs"). DeepSpeed's
    files in ds/ go through DeepSpeed's own loader, which does not restrict them."""
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "objects of other types"
        raise ResumeError(f"{path}: holds {unsafe} beyond tensors, plain values and numpy arrays: not a file the "
                          f"trainer wrote, and loading it could run code; start over without it "
                          f"(checkpoint.resume=none --overwrite)") from None


def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / TRAINER_STATE).read_text())


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-N` directory under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return sorted(found, reverse=True)


def find_latest_complete(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`; warns naming every newer one it skips."""
    root = Path(root)
    if root.is_dir():
        for tmp in sorted(p for p in root.iterdir() if p.name.startswith(".tmp-")):
            log.warning("checkpoint: skipping %s: an interrupted write (incomplete)", tmp)
    pointer = None
    if (root / LATEST).is_file():
        pointer = (root / LATEST).read_text().strip()
    for _, path in list_checkpoints(root):
        reason = check_complete(path, verify=True)
        if reason is None:
            if pointer and pointer != path.name:
                log.warning("checkpoint: %s names %s, but %s is the newest complete checkpoint; using it",
                            root / LATEST, pointer, path.name)
            return path
        log.warning("checkpoint: skipping %s: incomplete or corrupt (%s)", path, reason)
    return None


class Checkpointer:
    """Saves and restores resume state for one run; every method is called on every rank."""

    def __init__(self, cfg: CheckpointConfig, output_dir: str | Path, config_hash: str = "",
                 on_save: Callable[[Path, int], None] | None = None, config: dict | None = None):
        self.cfg = cfg
        self.root = Path(cfg.dir) if cfg.dir else Path(output_dir) / "checkpoints"
        self.config_hash = config_hash   # the training configuration's hash (trainer.run.training_hash)
        self.config = config             # the job as written (config.yaml's content), kept with every checkpoint
        self.resume_from: Path | None = None
        self.on_save = on_save   # every rank, after a checkpoint is complete (Ray Train uploads it)

    # ---- choosing where to resume -------------------------------------------------------------
    def resume_target(self) -> Path | None:
        """Decide (rank 0) and agree (all ranks) which checkpoint to resume from, if any."""
        target: str | None = None
        error: str | None = None
        if distributed.is_main():
            mode = self.cfg.resume
            if mode == "none":
                target = None
            elif mode == "auto":
                found = find_latest_complete(self.root)
                target = str(found) if found else None
            else:
                error = self._check_resume_path(Path(mode))
                target = mode
        target, error = distributed.broadcast_object((target, error))
        if error:
            raise on_every_rank(ResumeError(error))
        self.resume_from = Path(target) if target else None
        if self.resume_from:
            log.info("checkpoint: resuming from %s", self.resume_from)
        return self.resume_from

    def _check_resume_path(self, path: Path) -> str | None:
        """Why `checkpoint.resume: PATH` cannot be resumed (naming what would be valid), or None."""
        reason = "it does not exist" if not path.exists() else check_complete(path, verify=True)
        if reason is None:
            return None
        found = [p.name for _, p in list_checkpoints(self.root) if check_complete(p) is None]
        here = f"; complete checkpoints in {self.root}: {', '.join(found)}" if found else ""
        return (f"checkpoint.resume: {path} is not a usable checkpoint ({reason}); give a complete checkpoint folder "
                f"(step-N holding {MANIFEST}), auto (the newest complete one in {self.root}) or none (start from "
                f"step 0){here}")

    def run_id(self) -> str | None:
        """The MLflow run id stored with the checkpoint being resumed (None when starting fresh)."""
        if self.resume_from is None:
            return None
        return read_trainer_state(self.resume_from).get("mlflow_run_id")

    # ---- restoring ----------------------------------------------------------------------------
    def restore(self, engine, data: Stateful) -> int:
        """Load `resume_from` into the engine, this rank's data stream and RNGs; returns the step (0 if fresh)."""
        if self.resume_from is None:
            return 0
        ckpt = self.resume_from
        state = read_trainer_state(ckpt)
        step = int(state["step"])
        if self.config_hash and state.get("config_sha256") not in (None, self.config_hash):
            # trainer.run.check_resume has refused every difference that changes the training
            log.info("checkpoint: %s was written under a config that differs in length or grad_accum only", ckpt)
        per_step = int(state.get("micro_batches_per_step", engine.world_size * engine.job.optim.grad_accum))
        if int(state["world_size"]) == engine.world_size:
            if per_step != engine.world_size * engine.job.optim.grad_accum:
                raise on_every_rank(ResumeError(
                    f"checkpoint {ckpt}: written with optim.grad_accum={per_step // engine.world_size} on "
                    f"{engine.world_size} ranks; resume with the same grad_accum"))
            engine.load_state(ckpt / DS_TAG)   # DeepSpeed's own loader (torch.load, weights_only=False)
            mine = load_own(ckpt / rank_file(engine.rank))
            data.load_state_dict(mine["data"])
            distributed.set_rng_state(mine["rng"])
        else:
            self._restore_elsewhere(ckpt, state, engine, data)
        if engine.global_step != step:
            raise RuntimeError(f"checkpoint {ckpt}: DeepSpeed restored step {engine.global_step}, "
                               f"trainer_state says {step}")
        return step

    def _restore_elsewhere(self, ckpt: Path, state: dict, engine, data: Stateful) -> None:
        """Resume a checkpoint written by another number of ranks from its portable state.

        The optimizer step must hold the same micro-batches (world size x grad_accum); the data then
        continues at global micro-batch step x that number, and every micro-batch's RNG is re-seeded
        from its global index (`loop.seed_micro_batch`), so the losses are the uninterrupted run's.
        """
        old_world, new_world = int(state["world_size"]), engine.world_size
        per_step = int(state.get("micro_batches_per_step", 0))   # 0: written before the portable state existed
        accum = engine.job.optim.grad_accum
        if not hasattr(data, "restart_at"):
            raise on_every_rank(ResumeError(
                f"checkpoint {ckpt} was written by {old_world} ranks, this run has {new_world}: "
                f"{type(data).__name__} resumes only on the number of ranks that wrote it"))
        if not (ckpt / PORTABLE).is_file():
            raise on_every_rank(ResumeError(
                f"checkpoint {ckpt} was written by {old_world} ranks, this run has {new_world}, and it has no "
                f"{PORTABLE} (checkpoint.portable was off): resume with {old_world} ranks"))
        if per_step != new_world * accum:
            want = per_step / new_world
            hint = f"optim.grad_accum={int(want)}" if want == int(want) else f"a world size dividing {per_step}"
            raise on_every_rank(ResumeError(
                f"checkpoint {ckpt}: an optimizer step held {per_step} micro-batches ({old_world} ranks x grad_accum "
                f"{per_step // old_world}); with {new_world} ranks set {hint} to resume on the same batches"))
        log.info("checkpoint: %s was written by %d ranks; resuming on %d from its portable state", ckpt,
                 old_world, new_world)
        data.restart_at(int(state["step"]) * per_step)   # first: a stream that cannot refuses before anything loads
        engine.load_portable_state(load_own(ckpt / PORTABLE))

    # ---- saving -------------------------------------------------------------------------------
    def due(self, step: int, max_steps: int) -> bool:
        every = self.cfg.every
        return (every > 0 and step % every == 0) or (self.cfg.save_final and step == max_steps)

    def save(self, step: int, engine, data: Stateful, metrics: dict[str, float] | None = None,
             run_id: str | None = None, evaluations: dict[str, float] | None = None) -> Path:
        """Write `step-N` atomically (see the module docstring). Collective.

        `metrics` (the step's row and the evaluations so far) serve `best_metric`; `evaluations`
        are what a resumed run reports again at its end (e.g. retrieval before training).
        """
        final = self.root / step_name(step)
        tmp = self.root / f".tmp-{step_name(step)}"
        if engine.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        distributed.barrier()
        engine.save_state(tmp / DS_TAG)
        mine = {"rank": engine.rank, "step": step, "data": data.state_dict(), "rng": distributed.rng_state()}
        part = tmp / f".{rank_file(engine.rank)}.part"
        torch.save(mine, part)
        os.replace(part, tmp / rank_file(engine.rank))
        portable = engine.portable_state() if self.cfg.portable else {}   # collective
        if engine.is_main and self.cfg.portable:
            torch.save(portable, tmp / f".{PORTABLE}.part")
            os.replace(tmp / f".{PORTABLE}.part", tmp / PORTABLE)
        distributed.barrier()
        faults.maybe_kill("in_checkpoint", step)
        if engine.is_main:
            state = {"step": step, "world_size": engine.world_size, "mlflow_run_id": run_id,
                     "micro_batches_per_step": engine.world_size * engine.job.optim.grad_accum,
                     "metrics": metrics or {}, "evaluations": evaluations or {}, "config_sha256": self.config_hash, "time": time.time()}
            if self.config is not None:
                state["config"] = self.config
            write_atomic(tmp / TRAINER_STATE, json.dumps(state, indent=1))
            write_manifest(tmp)
            replace_dir(tmp, final)  # final exists when a resumed run rewrites a step it wrote before a kill
            _fsync_dir(self.root)
            write_atomic(self.root / LATEST, final.name + "\n")
            self.prune(keep_also=final)
            log.info("checkpoint: saved %s", final)
        distributed.barrier()
        if self.on_save is not None:
            self.on_save(final, step)
        return final

    def prune(self, keep_also: Path | None = None) -> list[Path]:
        """Delete all but the newest `keep_last` complete checkpoints (and the best one); returns what went."""
        complete, broken = [], []
        for step, path in list_checkpoints(self.root):
            (complete if check_complete(path) is None else broken).append((step, path))
        keep = {p for _, p in complete[: self.cfg.keep_last]}
        if keep_also is not None:
            keep.add(keep_also)
        if self.cfg.best_metric:
            scored = [(read_trainer_state(p).get("metrics", {}).get(self.cfg.best_metric), p) for _, p in complete]
            scored = [(v, p) for v, p in scored if v is not None]
            if scored:
                best = (min if self.cfg.best_mode == "min" else max)(scored, key=lambda vp: vp[0])[1]
                keep.add(best)
                write_atomic(self.root / "best", best.name + "\n")
        removed = [p for _, p in complete + broken if p not in keep]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        for stale in [*self.root.glob(".step-*-old"), *self.root.glob(".tmp-*")]:  # no write is in progress now
            shutil.rmtree(stale, ignore_errors=True)
        return removed
