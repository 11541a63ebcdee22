"""Checkpoints that survive a kill mid-save, and resuming from the last complete one.

mmengine's ``CheckpointHook`` writes a checkpoint straight to its final name, deletes the oldest
kept checkpoint *before* writing the new one and rewrites ``last_checkpoint`` in place: a kill
during a save can leave a half-written file under a real name, no checkpoint at all
(``max_keep_ckpts=1``) or an empty ``last_checkpoint``. :class:`SafeCheckpointHook` (the runner
of :func:`visionattn.engine.build_runner` puts it in place of ``CheckpointHook``, same arguments)
writes every file to a temporary name in the same folder and renames it into place
(``os.replace``, atomic), deletes old checkpoints only after the new one is complete, and refuses
to save weights that are not finite. :func:`latest_complete_checkpoint` is what ``--resume``
resumes from.
"""
import os
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ...registry import HOOKS

ATOMIC_BACKEND = "visionattn_atomic_local"


def atomic_write_bytes(data: bytes, path: Union[str, Path]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into
    place: readers (and a run killed meanwhile) see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (temporary file + rename)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write_bytes(obj.encode(encoding), filepath)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def is_complete_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a whole ``torch.save`` zip file (its central directory, written last, reads)."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def latest_complete_checkpoint(work_dir: Union[str, Path]) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one ``work_dir/last_checkpoint`` names if it is
    complete, else the newest complete ``*.pth`` of ``work_dir`` (temporary ``.part`` files never
    count), else None."""
    work_dir = Path(work_dir)
    pointer = work_dir / "last_checkpoint"
    named = None
    if pointer.is_file():
        named = pointer.read_text().strip() or None
        if named and is_complete_checkpoint(named):
            return named
    candidates = sorted((p for p in work_dir.glob("*.pth") if p.is_file()), key=lambda p: p.stat().st_mtime,
                        reverse=True)
    for path in candidates:
        if is_complete_checkpoint(path):
            if named or pointer.exists():
                warnings.warn(f"{str(pointer)!r} names {named!r}, which is missing or incomplete; resuming from "
                              f"{str(path)!r}, the newest complete checkpoint")
            return str(path)
    return None


def check_finite_weights(model: torch.nn.Module) -> None:
    """Raise FloatingPointError naming the parameters/buffers that hold NaN or inf."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise FloatingPointError(f"the model holds non-finite values in {len(bad)} tensors ({', '.join(bad[:5])}"
                                 f"{', ...' if len(bad) > 5 else ''}); not saving a checkpoint over the good ones. "
                                 f"Lower the learning rate, enable gradient clipping, or set "
                                 f"nonfinite_loss='skip' in the config")


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with atomic writes, old checkpoints removed only
    after the new one is written, and weights checked to be finite before each save."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._atomic = self.backend_args is None and self.file_client_args is None and (
            self.out_dir is None or "://" not in str(self.out_dir))
        if self._atomic:
            self.backend_args = {"backend": ATOMIC_BACKEND}

    def _save_checkpoint_with_step(self, runner, step, meta):
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        check_finite_weights(model)
        # the kept ids go into the checkpoint (a resumed run deletes the right files), but the files
        # they drop are deleted only once the new checkpoint is complete
        dropped = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                dropped.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, ckpt_filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        for old in dropped:
            if old == step:
                continue
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)
        pointer = os.path.join(runner.work_dir, "last_checkpoint")
        if self._atomic:
            atomic_write_bytes(str(self.last_ckpt).encode(), pointer)
        else:
            with open(pointer, "w") as f:
                f.write(self.last_ckpt)
