"""Training on several GPUs of one host through ``tools/train.py``: scaling, equivalence, checkpoints, a killed rank.

    python benchmarks/ddp_scaling.py --gpus 2 --out OUT_DIR                  # on a machine with 2 GPUs
    python benchmarks/ddp_scaling.py --device cpu --gpus 2 --out OUT_DIR     # the same paths on CPU (gloo, tiny models)

Every training run is ``tools/train.py`` itself, started as a user starts it: one GPU as
``python tools/train.py CONFIG``, N GPUs as ``python -m torch.distributed.run --standalone
--nproc_per_node=N tools/train.py CONFIG --launcher pytorch``. CONFIG is written by this script
(kept in ``<work-root>/configs/`` and copied to OUT_DIR): it inherits the real recipe
(``configs/classification/biformer_s.py``, ``configs/stereo/matchstereo_t_sceneflow.py``), swaps
the data for an in-memory synthetic set (``visionattn.datasets.synthetic``: no disk, no decoding,
so the numbers are the GPUs' and the interconnect's), runs a fixed number of iterations and adds
``TrainSpeedHook``, which writes each rank's iteration times, losses, peak memory and weight
checksums. Stages (``--stages``; each run is recorded as it ends, and running the command again
skips the runs already recorded in ``<work-root>/ddp_scaling.json``):

- ``throughput``: each case (default ``biformer_small``: the recipe as it is, bf16 autocast, batch 64
  per GPU, ``model.cuda_graph=True``; ``matchstereo_tiny``: the SceneFlow recipe, fp32, batch 8 per
  GPU of 320x736 crops, ``cuda_graph=True``) on 1 GPU and on N GPUs at the same batch per GPU:
  images/s after ``--warmup`` iterations, speed-up, scaling efficiency, peak memory on every GPU,
  and whether the ranks ended with identical weights.
- ``equivalence``: ``--eq-case`` with the same seed and the same global batch on 1 GPU (N x the
  batch) and on N GPUs, no random augmentation (Mixup/CutMix, random erasing, drop path, EMA off)
  and SyncBN on N GPUs, so that both runs see the same batches and the same BatchNorm statistics:
  the per-iteration losses over ``--eq-iters`` iterations and the final weights are compared. If
  the SyncBN run fails, it is repeated without SyncBN (per-GPU BatchNorm statistics) and said so.
- ``checkpoint``: the N-GPU run's last checkpoint loaded with ``visionattn.create_model(...,
  checkpoint=...)`` on CPU and on one GPU, without a process group: the weights must be the
  checkpoint's, and the logits of both on the same images are compared.
- ``kill_resume``: the N-GPU equivalence run again, its last rank killed with SIGKILL at iteration
  ``--kill-at``: torchrun must stop every rank with a message naming the killed rank, and
  ``tools/train.py --resume`` on N GPUs must reach the uninterrupted run's weights (the two runs'
  first checkpoints, taken before the kill, show the run-to-run noise of the GPU kernels).

Writes ``ddp_scaling.json`` (everything, with the machine and each command line) and
``ddp_scaling.md`` (tables) into OUT_DIR, plus the generated configs and the last lines of every
run's console output (``logs/``). Work dirs, with checkpoints of several hundred MB, stay under
``--work-root`` (default ``work_dirs/ddp_scaling``).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "tools" / "train.py"
if str(REPO) not in sys.path:  # this checkout's visionattn, as the training runs get it (PYTHONPATH)
    sys.path.insert(0, str(REPO))

# task, recipe (relative to the repo), network, batch per GPU, precision, CUDA graphs
CASES: Dict[str, Dict] = {
    "biformer_small": dict(task="classification", recipe="configs/classification/biformer_s.py",
                           network="biformer_small", batch=64, input_size=224, num_classes=1000,
                           amp="bfloat16", cuda_graph=True, device="cuda"),
    "matchstereo_tiny": dict(task="stereo", recipe="configs/stereo/matchstereo_t_sceneflow.py",
                             network="matchstereo_tiny", batch=8, crop_size=(320, 736), amp=None,
                             cuda_graph=True, device="cuda"),
    # CPU stand-ins (gloo): the same code paths with tiny networks, for tests
    "test_vit": dict(task="classification", recipe="configs/classification/biformer_s.py", network="test_vit",
                     network_kwargs=dict(img_size=32), batch=4, input_size=32, num_classes=8, amp=None,
                     cuda_graph=False, device="cpu"),
    "matchstereo_tiny_shallow": dict(task="stereo", recipe="configs/stereo/matchstereo_t_sceneflow.py",
                                     network="matchstereo_tiny",
                                     network_kwargs=dict(depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1)),
                                     batch=1, crop_size=(192, 224), amp=None, cuda_graph=False, device="cpu"),
}
DEFAULT_CASES = {"cuda": ["biformer_small", "matchstereo_tiny"], "cpu": ["test_vit"]}
DEFAULT_EQ_CASE = {"cuda": "biformer_small", "cpu": "test_vit"}
STAGES = ("throughput", "equivalence", "checkpoint", "kill_resume")
# NVLink multicast stays off (the lending machines set these; keep them in children's environments)
NO_MULTICAST = dict(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")


# --- configs -----------------------------------------------------------------------------------

def config_text(name: str, case: Dict, *, batch: int, max_iters: int, exact: bool, sync_bn: bool,
                ckpt_interval: Optional[int], log_interval: int, num_workers: int, cuda: bool,
                length: int) -> str:
    """A config inheriting the case's recipe, on synthetic data, for ``max_iters`` iterations.

    ``exact``: no random augmentation and no EMA (the equivalence and resume runs)."""
    from mmengine.config import Config

    recipe = REPO / case["recipe"]
    base = Config.fromfile(str(recipe))
    purpose = "one-GPU vs several-GPU comparison" if exact else "throughput"
    lines = [f"# Written by benchmarks/ddp_scaling.py ({purpose}, case {name}): the recipe below on",
             "# in-memory synthetic data (visionattn.datasets.synthetic) for a fixed number of iterations.",
             f"_base_ = [{str(recipe)!r}]"]
    kwargs = dict(case.get("network_kwargs") or {})
    if exact and case["task"] == "classification":
        kwargs["drop_path_rate"] = 0.0
    model = dict(network=case["network"], cuda_graph=bool(case["cuda_graph"] and cuda))
    if kwargs:
        model["network_kwargs"] = kwargs
    if case["task"] == "classification":
        model["num_classes"] = case["num_classes"]
        if exact:
            model.update(mixup=None, data_preprocessor=dict(random_erasing=None))
        dataset = dict(_delete_=True, type="SyntheticClassification", length=length,
                       num_classes=case["num_classes"], input_size=case["input_size"], pool=256)
    else:
        dataset = dict(_delete_=True, type="SyntheticStereo", length=length, crop_size=tuple(case["crop_size"]),
                       pool=32)
    lines.append(f"model = dict({_kwargs(model)})")
    lines.append(f"train_dataloader = dict(batch_size={batch}, num_workers={num_workers}, persistent_workers=False,\n"
                 f"    pin_memory={cuda}, drop_last=True,\n"
                 f"    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),\n"
                 f"    dataset=dict({_kwargs(dataset)}))")
    lines += [f"{k} = None" for k in ("val_dataloader", "val_cfg", "val_evaluator",
                                      "test_dataloader", "test_cfg", "test_evaluator")]
    lines.append(f"train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters}, "
                 f"val_interval={max_iters + 1})")
    if case["task"] == "classification":  # the recipe's schedule is by epochs of ImageNet
        lines.append("param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10)]")
    ckpt = (dict(by_epoch=False, interval=ckpt_interval, max_keep_ckpts=5) if ckpt_interval
            else dict(by_epoch=False, interval=10**9, save_last=False))
    lines.append(f"default_hooks = dict(logger=dict(interval={log_interval}), checkpoint=dict({_kwargs(ckpt)}))")
    lines.append("log_processor = dict(by_epoch=False)")
    hooks = [] if exact else [dict(h) for h in base.get("custom_hooks", [])]
    hooks.append(dict(type="TrainSpeedHook"))
    lines.append(f"custom_hooks = {hooks!r}")
    if case["amp"] and cuda:
        # tools/train.py --amp makes it an AmpOptimWrapper; bf16 needs no loss scaling
        lines.append(f"optim_wrapper = dict(dtype={case['amp']!r}, loss_scale=dict(enabled=False))")
    lines.append(f"sync_bn = {'torch' if sync_bn else None!r}")
    lines.append("randomness = dict(seed=0)")
    return "\n".join(lines) + "\n"


def _kwargs(d: Dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


# --- launching ---------------------------------------------------------------------------------

class Launch:
    """One ``tools/train.py`` run (plain for one process, under torchrun for several)."""

    def __init__(self, cfg: Path, work: Path, world: int, amp: bool, env: Dict[str, str],
                 extra: Sequence[str] = ()):
        self.work, self.world = work, world
        work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable]
        if world > 1:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
        cmd += [str(TRAIN), str(cfg), "--work-dir", str(work)]
        if world > 1:
            cmd += ["--launcher", "pytorch"]
        if amp:
            cmd.append("--amp")
        self.cmd = cmd + list(extra)
        self.log = work / "console.log"
        self.started = time.time()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=max(1.0, timeout - (time.time() - self.started)))
        except subprocess.TimeoutExpired:
            self.kill_all()
            return -999

    def kill_all(self) -> None:
        for pid in list(rank_pids(self.proc.pid).values()) + [self.proc.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()

    def command_line(self) -> str:
        return " ".join(str(c) for c in self.cmd).replace(str(REPO) + "/", "")

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def iteration(self) -> int:
        """The last training iteration rank 0 logged (mmengine's ``Iter(train) [ k/max]``), 0 if none."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        found = re.findall(r"Iter\(train\) \[\s*(\d+)/", text)
        return int(found[-1]) if found else 0


def rank_pids(parent: int) -> Dict[int, int]:
    """rank -> pid of the worker processes torchrun (pid ``parent``) started (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            for item in (d / "environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)  # the worker and what it started (torchrun gives each worker its own session)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# --- reading results ---------------------------------------------------------------------------

def read_ranks(work: Path, world: int) -> List[Dict]:
    ranks = []
    for r in range(world):
        path = work / f"train_speed_rank{r}.json"
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: the run did not finish (see {work / 'console.log'})")
        ranks.append(json.loads(path.read_text()))
    return ranks


def speed_summary(ranks: List[Dict], warmup: int) -> Dict:
    """Images/s over the iterations after ``warmup`` (all ranks' images over the slowest rank's time)."""
    n = len(ranks[0]["records"])
    if n <= warmup:
        raise RuntimeError(f"{n} iterations recorded, not more than the {warmup} warm-up iterations")
    images, spans, steps = 0, [], []
    for rank in ranks:
        rec = rank["records"]
        images += sum(r["samples"] for r in rec[warmup:])
        spans.append(rec[-1]["time"] - rec[warmup - 1]["time"] if warmup else rec[-1]["time"] - rank["start_time"])
        times = [rec[0]["time"] - rank["start_time"]] + [b["time"] - a["time"] for a, b in zip(rec, rec[1:])]
        steps.append(sorted(times[warmup:]))
    step = steps[0]
    return dict(
        images_per_s=images / max(spans), measured_iters=n - warmup, warmup_iters=warmup,
        batch_per_gpu=ranks[0]["records"][-1]["samples"], world_size=len(ranks),
        step_ms_median=1000 * step[len(step) // 2], step_ms_min=1000 * step[0], step_ms_max=1000 * step[-1],
        peak_allocated_mib=[r.get("peak_allocated_mib") for r in ranks],
        peak_reserved_mib=[r.get("peak_reserved_mib") for r in ranks],
        device_names=[r.get("device_name", r.get("device")) for r in ranks],
        weights_identical_on_all_ranks=len({(r["weights_sum"], r["weights_norm"]) for r in ranks}) == 1,
    )


def mean_losses(ranks: List[Dict]) -> List[float]:
    """Per iteration, the mean over ranks of each rank's loss (= the global batch's loss for equal batches)."""
    per_rank = [[r["loss"] for r in rank["records"]] for rank in ranks]
    return [sum(v) / len(v) for v in zip(*per_rank)]


def load_state(path: Path) -> Dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def compare_states(a: Dict, b: Dict) -> Dict:
    """Differences of two state dicts over their floating-point tensors (b is the reference)."""
    import torch

    if a.keys() != b.keys():
        return dict(same_keys=False, only_in_first=sorted(set(a) - set(b))[:5], only_in_second=sorted(set(b) - set(a))[:5])
    diff2 = ref2 = 0.0
    worst, worst_key, exact = 0.0, None, True
    for key, ref in b.items():
        if not (torch.is_tensor(ref) and ref.is_floating_point()):
            exact &= bool(torch.equal(a[key], ref)) if torch.is_tensor(ref) else a[key] == ref
            continue
        d = (a[key].double() - ref.double())
        exact &= bool((d == 0).all())
        diff2 += float((d * d).sum())
        ref2 += float((ref.double() ** 2).sum())
        m = float(d.abs().max()) if d.numel() else 0.0
        if m > worst:
            worst, worst_key = m, key
    return dict(same_keys=True, exact=exact, rel_l2=(diff2 / ref2) ** 0.5 if ref2 else 0.0, max_abs=worst,
                max_abs_key=worst_key)


# --- the measurement ---------------------------------------------------------------------------

class Measurement:
    def __init__(self, args):
        self.args = args
        self.cuda = args.device == "cuda"
        self.root = Path(args.work_root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out).resolve()
        self.state_path = self.root / "ddp_scaling.json"
        self.state = self._load_state()
        self.env = self._child_env()

    def _settings(self) -> Dict:
        a = self.args
        return dict(device=a.device, gpus=a.gpus, cases=a.cases, eq_case=a.eq_case, warmup=a.warmup, iters=a.iters,
                    eq_iters=a.eq_iters, eq_ckpt_interval=a.eq_ckpt_interval, kill_at=a.kill_at,
                    num_workers=a.num_workers)

    def _load_state(self) -> Dict:
        if self.state_path.is_file() and not self.args.redo:
            state = json.loads(self.state_path.read_text())
            if state.get("settings") == self._settings():
                return state
            print(f"[ddp_scaling] {self.state_path} has other settings: starting over", flush=True)
        return dict(settings=self._settings(), runs={})

    def _child_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        for key, value in NO_MULTICAST.items():
            env.setdefault(key, value)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        if not self.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def save(self) -> None:
        self.state["environment"] = environment(self.env)
        self.state_path.write_text(json.dumps(self.state, indent=1))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "ddp_scaling.json").write_text(json.dumps(self.state, indent=1))
        (self.out / "ddp_scaling.md").write_text(markdown(self.state))
        for sub in ("configs", "logs"):
            if (self.root / sub).is_dir():
                shutil.copytree(self.root / sub, self.out / sub, dirs_exist_ok=True)

    def log(self, msg: str) -> None:
        print(f"[ddp_scaling {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)

    # one training run ------------------------------------------------------------------------
    def config(self, name: str, case_name: str, world: int, exact: bool, sync_bn: bool = False) -> Path:
        case, a = CASES[case_name], self.args
        global_batch = case["batch"] * a.gpus
        text = config_text(case_name, case, batch=case["batch"] * (a.gpus if exact and world == 1 else 1),
                           max_iters=a.eq_iters if exact else a.warmup + a.iters, exact=exact, sync_bn=sync_bn,
                           ckpt_interval=a.eq_ckpt_interval if exact else None, log_interval=1 if exact else 10,
                           num_workers=a.num_workers, cuda=self.cuda,
                           length=global_batch * 10 if exact else 1_000_000)
        path = self.root / "configs" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, name: str, cfg: Path, world: int, amp: bool, *, needs: Sequence[str] = (),
            extra: Sequence[str] = (), work: Optional[Path] = None, fresh: bool = True) -> Dict:
        """Run (or reuse the recorded result of) one training; ``needs``: files its result must leave."""
        work = work or self.root / "work" / name
        done = self.state["runs"].get(name)
        if done and done.get("ok") and all((work / f).is_file() for f in needs):
            self.log(f"{name}: recorded earlier, reused")
            return done
        if fresh and work.exists():
            shutil.rmtree(work)
        launch = Launch(cfg, work, world, amp, self.env, extra)
        self.log(f"{name}: {launch.command_line()}")
        rc = launch.wait(self.args.run_timeout)
        result = dict(command=launch.command_line(), config=str(cfg.relative_to(self.root)), returncode=rc,
                      seconds=round(time.time() - launch.started, 1), world_size=world, ok=rc == 0,
                      work_dir=str(work))
        self._keep_log(name, launch)
        if rc != 0:
            result["error_tail"] = launch.tail(40)
            self.log(f"{name}: FAILED (exit {rc}); last lines:\n{launch.tail(25)}")
        self.state["runs"][name] = result
        self.save()
        return result

    def _keep_log(self, name: str, launch: Launch) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{name}.log").write_text(launch.tail(200) + "\n")

    # stages ----------------------------------------------------------------------------------
    def throughput(self) -> None:
        a, out = self.args, self.state.setdefault("throughput", {})
        for case_name in a.cases:
            case = CASES[case_name]
            rows = {}
            for world in sorted({1, a.gpus}):
                name = f"throughput_{case_name}_{world}gpu"
                cfg = self.config(name, case_name, world, exact=False)
                run = self.run(name, cfg, world, bool(case["amp"]) and self.cuda)
                if not run["ok"]:
                    rows[str(world)] = dict(ok=False, error_tail=run.get("error_tail"), command=run["command"])
                    continue
                if "summary" not in run:
                    run["summary"] = speed_summary(read_ranks(Path(run["work_dir"]), world), a.warmup)
                rows[str(world)] = dict(ok=True, command=run["command"], **run["summary"])
            one, many = rows.get("1", {}), rows.get(str(a.gpus), {})
            entry = dict(case=_describe(case_name, self.cuda), runs=rows)
            if a.gpus > 1 and one.get("ok") and many.get("ok"):
                speedup = many["images_per_s"] / one["images_per_s"]
                entry.update(speedup=speedup, efficiency=speedup / a.gpus, target_speedup=0.925 * a.gpus,
                             meets_target=speedup >= 0.925 * a.gpus)
            out[case_name] = entry
            self.save()

    def equivalence(self) -> None:
        a = self.args
        case = CASES[a.eq_case]
        amp = bool(case["amp"]) and self.cuda
        need = [f"iter_{a.eq_iters}.pth", f"iter_{a.eq_ckpt_interval}.pth", "train_speed_rank0.json"]
        one = self.run("equivalence_1gpu", self.config("equivalence_1gpu", a.eq_case, 1, exact=True), 1, amp,
                       needs=need)
        name = f"equivalence_{a.gpus}gpu"
        done = self.state["runs"].get(name)
        # SyncBN first (the same BatchNorm statistics as one GPU with the global batch); should SyncBN
        # fail (e.g. inside a CUDA graph), per-GPU statistics, and the report says so
        attempts = [True, False] if self.cuda else [False]  # torch's SyncBatchNorm runs on GPUs only
        for sync_bn in [done["sync_bn"]] if done and done.get("ok") else attempts:
            many = self.run(name, self.config(name + ("_syncbn" if sync_bn else ""), a.eq_case, a.gpus, exact=True,
                                              sync_bn=sync_bn), a.gpus, amp, needs=need)
            many["sync_bn"] = sync_bn
            if many["ok"]:
                break
            self.state["runs"][f"{name}_{'syncbn' if sync_bn else 'plain_bn'}_failed"] = dict(many)
        result = dict(case=_describe(a.eq_case, self.cuda), global_batch=case["batch"] * a.gpus,
                      iterations=a.eq_iters, sync_bn=many["sync_bn"],
                      sync_bn_run_failed=f"{name}_syncbn_failed" in self.state["runs"], runs={"1": one["command"], str(a.gpus): many["command"]})
        if one["ok"] and many["ok"]:
            r1 = read_ranks(Path(one["work_dir"]), 1)
            rn = read_ranks(Path(many["work_dir"]), a.gpus)
            l1, ln = mean_losses(r1), mean_losses(rn)
            rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(l1, ln)]
            worst = max(range(len(rel)), key=rel.__getitem__)
            tol = a.loss_rtol if a.loss_rtol is not None else (2e-2 if amp else 1e-4)
            result.update(
                losses_1gpu=l1, losses_ngpu=ln, loss_rel_diff_first=rel[0], loss_rel_diff_max=rel[worst],
                loss_rel_diff_max_at_iter=worst, loss_rel_diff_mean=sum(rel) / len(rel), loss_rtol=tol,
                losses_within_tolerance=max(rel) <= tol,
                loss_first_last_1gpu=(l1[0], l1[-1]),
                weights_final=compare_states(load_state(Path(many["work_dir"]) / f"iter_{a.eq_iters}.pth"),
                                             load_state(Path(one["work_dir"]) / f"iter_{a.eq_iters}.pth")),
                weights_identical_on_all_ranks=len({(r["weights_sum"], r["weights_norm"]) for r in rn}) == 1,
                peak_allocated_mib={"1": [r.get("peak_allocated_mib") for r in r1],
                                    str(a.gpus): [r.get("peak_allocated_mib") for r in rn]})
        else:
            result["error"] = "a run failed: see runs in ddp_scaling.json and logs/"
        self.state["equivalence"] = result
        self.save()

    def checkpoint(self) -> None:
        import torch

        import visionattn
        from visionattn.engine import allow_mmengine_checkpoints

        allow_mmengine_checkpoints()  # the checkpoints of tools/train.py pickle mmengine's MessageHub
        a = self.args
        case = CASES[a.eq_case]
        run = self.state["runs"].get(f"equivalence_{a.gpus}gpu")
        path = Path(run["work_dir"]) / f"iter_{a.eq_iters}.pth" if run else None
        if not (path and path.is_file()):
            self.state["checkpoint"] = dict(error="no checkpoint of the N-GPU equivalence run: run that stage first")
            self.save()
            return
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        keys = list(ckpt["state_dict"])
        kwargs = dict(case.get("network_kwargs") or {})
        if case["task"] == "classification":
            kwargs["num_classes"] = case["num_classes"]
        result = dict(checkpoint=str(path.relative_to(self.root)), saved_world_size=a.gpus,
                      keys=len(keys), keys_with_module_prefix=sum(k.startswith("module.") for k in keys))
        inputs = _example_inputs(case)
        outputs = {}
        for device in ["cpu"] + (["cuda:0"] if self.cuda and torch.cuda.is_available() else []):
            t0 = time.time()
            net = visionattn.create_model(case["network"], checkpoint=str(path), **kwargs).to(device).eval()
            loaded = {f"network.{k}": v for k, v in net.state_dict().items()}
            same = all(torch.equal(loaded[k].cpu(), v) for k, v in ckpt["state_dict"].items() if k in loaded)
            with torch.no_grad():
                out = net(*[x.to(device) for x in inputs])
            out = next(t for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t))
            outputs[device] = out.float().cpu()
            del net
            result[device] = dict(loaded=True, weights_equal_checkpoint=same, seconds=round(time.time() - t0, 1),
                                  process_group=torch.distributed.is_available() and torch.distributed.is_initialized())
        if "cuda:0" in outputs:
            torch.cuda.empty_cache()  # the later stages' ranks share GPU 0 with this process
            d = (outputs["cuda:0"] - outputs["cpu"]).abs()
            result["output_max_abs_diff_gpu_vs_cpu"] = float(d.max())
            result["output_max_abs_cpu"] = float(outputs["cpu"].abs().max())
        self.state["checkpoint"] = result
        self.save()

    def kill_resume(self) -> None:
        a = self.args
        case = CASES[a.eq_case]
        amp = bool(case["amp"]) and self.cuda
        ref = self.state["runs"].get(f"equivalence_{a.gpus}gpu")
        if a.gpus < 2 or not (ref and ref.get("ok")):
            self.state["kill_resume"] = dict(error="needs --gpus >= 2 and the N-GPU equivalence run")
            self.save()
            return
        cfg = self.root / ref["config"]
        work = self.root / "work" / "kill_resume"
        done = self.state.get("kill_resume", {})
        if done.get("resume_ok") and done.get("reference_run") == ref["command"] and (work / f"iter_{a.eq_iters}.pth").is_file():
            self.log("kill_resume: recorded earlier, reused")
            return
        if work.exists():
            shutil.rmtree(work)
        victim = a.gpus - 1
        launch = Launch(cfg, work, a.gpus, amp, self.env)
        self.log(f"kill_resume: {launch.command_line()}; SIGKILL to rank {victim} at iteration {a.kill_at}")
        result = dict(command=launch.command_line(), killed_rank=victim, kill_at_iter=a.kill_at,
                      reference_run=ref["command"])
        deadline = time.time() + a.run_timeout
        pids: Dict[int, int] = {}
        while launch.proc.poll() is None and time.time() < deadline:
            pids = rank_pids(launch.proc.pid) or pids
            if launch.iteration() >= a.kill_at and victim in pids:
                result["logged_iter_at_kill"] = launch.iteration()
                os.kill(pids[victim], signal.SIGKILL)
                break
            time.sleep(0.02)
        killed_at = time.time()
        if "logged_iter_at_kill" not in result:
            launch.kill_all()
            result["error"] = (f"the run ended (exit {launch.proc.returncode}) or timed out before iteration "
                               f"{a.kill_at}: nothing was killed")
            self._keep_log("kill_resume_killed", launch)
            self.state["kill_resume"] = result
            self.save()
            return
        rc = launch.wait(a.run_timeout)
        stopped_after = time.time() - killed_at
        time.sleep(1.0)
        leftovers = [pid for pid in pids.values() if alive(pid)]
        for pid in leftovers:
            os.killpg(pid, signal.SIGKILL)
        self._keep_log("kill_resume_killed", launch)
        text = launch.log.read_text(errors="replace")
        cause = _root_cause(text)
        result.update(returncode=rc, seconds_to_stop=round(stopped_after, 2), leftover_processes=len(leftovers),
                      message=cause,
                      message_names_rank=bool(re.search(rf"rank\s*:\s*{victim}\b", cause)),
                      message_names_signal=("SIGKILL" in cause or "Signal 9" in cause),
                      stopped_cleanly=rc not in (0, -999) and not leftovers)
        last = work / "last_checkpoint"
        resume_from = Path(last.read_text().strip()) if last.is_file() else None
        result["resumed_from"] = resume_from.name if resume_from else None
        if not resume_from or int(resume_from.stem.split("_")[1]) >= a.eq_iters:
            result["error"] = "no checkpoint before the end of the run to resume from"
            self.state["kill_resume"] = result
            self.save()
            return
        self.state["runs"].pop("kill_resume_resumed", None)
        resumed = self.run("kill_resume_resumed", cfg, a.gpus, amp, extra=["--resume"], work=work, fresh=False)
        result["resume_command"] = resumed["command"]
        result["resume_ok"] = resumed["ok"]
        if resumed["ok"]:
            refdir = Path(ref["work_dir"])
            result["weights_final_vs_uninterrupted"] = compare_states(
                load_state(work / f"iter_{a.eq_iters}.pth"), load_state(refdir / f"iter_{a.eq_iters}.pth"))
            first = f"iter_{a.eq_ckpt_interval}.pth"
            if (work / first).is_file() and (refdir / first).is_file():
                result["run_to_run_noise_at_first_checkpoint"] = compare_states(load_state(work / first),
                                                                                load_state(refdir / first))
            tol = a.weights_rtol if a.weights_rtol is not None else (1e-3 if self.cuda else 1e-6)
            final = result["weights_final_vs_uninterrupted"]
            result["weights_rtol"] = tol
            result["same_weights"] = final.get("same_keys", False) and (final["exact"] or final["rel_l2"] <= tol)
        self.state["kill_resume"] = result
        self.save()


def _root_cause(text: str) -> str:
    """torchrun's failure report (from 'Root Cause' to the closing rule), or the last error lines."""
    start = text.rfind("Root Cause")
    if start >= 0:
        end = text.find("=====", start)
        return text[start:end if end > 0 else None].strip()
    lines = [line for line in text.splitlines() if "Error" in line or "FAILED" in line]
    return "\n".join(lines[-5:])


def _example_inputs(case: Dict) -> List:
    import torch

    from visionattn.datasets.synthetic import SyntheticClassification, SyntheticStereo

    if case["task"] == "classification":
        ds = SyntheticClassification(length=4, num_classes=case["num_classes"], input_size=case["input_size"], pool=4)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        return [(ds.images.float() - mean) / std]
    ds = SyntheticStereo(length=1, crop_size=case["crop_size"], pool=1)
    return [ds.pairs[:, 0].float(), ds.pairs[:, 1].float()]


def _describe(case_name: str, cuda: bool) -> Dict:
    case = dict(CASES[case_name], name=case_name)
    case["amp"] = case["amp"] if cuda else None
    case["cuda_graph"] = bool(case["cuda_graph"] and cuda)
    return case


def environment(env: Dict[str, str]) -> Dict:
    import torch

    info = dict(host=platform.node(), python=platform.python_version(), torch=torch.__version__,
                cpu_count=os.cpu_count(), time_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                env={k: env.get(k) for k in sorted(set(NO_MULTICAST) | {"CUDA_VISIBLE_DEVICES", "NCCL_P2P_DISABLE",
                                                                         "NCCL_IB_DISABLE", "OMP_NUM_THREADS"})})
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
        try:
            info["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # noqa: BLE001  (no NCCL in this build)
            info["nccl"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# --- the report --------------------------------------------------------------------------------

def _fmt(v, spec=",.0f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(state: Dict) -> str:
    s, env = state["settings"], state.get("environment", {})
    n = s["gpus"]
    out = ["# Training on several GPUs of one host: measured by benchmarks/ddp_scaling.py", "",
           f"Machine: {', '.join(env.get('gpus') or ['CPU only'])}; torch {env.get('torch')}, NCCL {env.get('nccl')}; "
           f"{env.get('time_utc')}; environment {env.get('env')}.", ""]
    tp = state.get("throughput")
    if tp:
        out += ["## Throughput (tools/train.py on in-memory synthetic data)", "",
                f"Images/s (stereo: pairs/s) of all GPUs together over {s['iters']} iterations after "
                f"{s['warmup']} warm-up iterations; peak memory = `torch.cuda.max_memory_allocated` on each GPU; "
                "ranks in sync = identical weight checksums on every rank at the end.", "",
                "| case | GPUs | batch / GPU | images/s | median step (ms) | speed-up | efficiency | peak MiB per GPU | ranks in sync |",
                "|---|---|---|---|---|---|---|---|---|"]
        for name, entry in tp.items():
            c = entry["case"]
            label = f"{name} ({c.get('amp') or 'fp32'}{', CUDA graph' if c.get('cuda_graph') else ''})"
            for world, row in entry["runs"].items():
                if not row.get("ok"):
                    out.append(f"| {label} | {world} | {c['batch']} | failed | | | | | |")
                    continue
                many = world == str(n) and n > 1
                mem = " / ".join(_fmt(m) for m in row["peak_allocated_mib"])
                out.append(f"| {label} | {world} | {row['batch_per_gpu']} | {_fmt(row['images_per_s'], ',.1f')} | "
                           f"{_fmt(row['step_ms_median'], '.1f')} | "
                           f"{_fmt(entry.get('speedup'), '.2f') + '×' if many and 'speedup' in entry else ''} | "
                           f"{_fmt(100 * entry['efficiency'], '.1f') + ' %' if many and 'efficiency' in entry else ''} | "
                           f"{mem} | {'yes' if row['weights_identical_on_all_ranks'] else 'NO'} |")
        out.append("")
        for name, entry in tp.items():
            if "speedup" in entry:
                out.append(f"- {name}: {entry['speedup']:.2f}× one GPU on {n} GPUs (target ≥ "
                           f"{entry['target_speedup']:.2f}×: {'met' if entry['meets_target'] else 'NOT met'}).")
        out.append("")
    eq = state.get("equivalence")
    if eq:
        out += ["## One GPU vs several: same seed, same global batch", ""]
        if "error" in eq:
            out += [f"Failed: {eq['error']}", ""]
        else:
            w = eq["weights_final"]
            out += [f"{eq['case']['name']}, global batch {eq['global_batch']} ({eq['global_batch']} on 1 GPU, "
                    f"{eq['global_batch'] // n} on each of {n}), {eq['iterations']} iterations, no random augmentation, "
                    f"BatchNorm {'synchronised (SyncBN)' if eq['sync_bn'] else 'statistics per process (no SyncBN)'}"
                    f"{' because the SyncBN run failed (its log: logs/)' if eq.get('sync_bn_run_failed') else ''}.", "",
                    "| | value |", "|---|---|",
                    f"| loss, 1 GPU, first / last iteration | {eq['loss_first_last_1gpu'][0]:.4f} / {eq['loss_first_last_1gpu'][1]:.4f} |",
                    f"| relative loss difference, first iteration | {eq['loss_rel_diff_first']:.2e} |",
                    f"| relative loss difference, mean / max over iterations | {eq['loss_rel_diff_mean']:.2e} / "
                    f"{eq['loss_rel_diff_max']:.2e} (iteration {eq['loss_rel_diff_max_at_iter']}) |",
                    f"| tolerance | {eq['loss_rtol']:.0e}: {'within' if eq['losses_within_tolerance'] else 'EXCEEDED'} |",
                    f"| final weights, relative L2 / max abs difference | {w.get('rel_l2', float('nan')):.2e} / "
                    f"{w.get('max_abs', float('nan')):.2e} |",
                    f"| weights identical on all {n} ranks | {'yes' if eq['weights_identical_on_all_ranks'] else 'NO'} |", ""]
    ck = state.get("checkpoint")
    if ck:
        out += ["## A checkpoint saved under DDP, loaded without DDP", ""]
        if "error" in ck:
            out += [f"Failed: {ck['error']}", ""]
        else:
            out.append(f"`{ck['checkpoint']}` ({ck['keys']} keys, {ck['keys_with_module_prefix']} with a `module.` prefix):")
            for dev in ("cpu", "cuda:0"):
                if dev in ck:
                    out.append(f"- {dev}: loaded with `visionattn.create_model(..., checkpoint=...)`, weights equal "
                               f"the checkpoint's: {'yes' if ck[dev]['weights_equal_checkpoint'] else 'NO'}")
            if "output_max_abs_diff_gpu_vs_cpu" in ck:
                out.append(f"- outputs GPU vs CPU (fp32): max |Δ| {ck['output_max_abs_diff_gpu_vs_cpu']:.2e} "
                           f"(max |output| {ck['output_max_abs_cpu']:.2f})")
            out.append("")
    kr = state.get("kill_resume")
    if kr:
        out += ["## A rank killed mid-run, then --resume", ""]
        if "returncode" in kr:
            out += [f"Rank {kr['killed_rank']} got SIGKILL at iteration {kr.get('logged_iter_at_kill')} (logged by rank 0); "
                    f"torchrun exited with {kr['returncode']} after {kr['seconds_to_stop']} s, "
                    f"{kr['leftover_processes']} processes left over. Its message:", "", "```",
                    kr["message"], "```", ""]
        if "error" in kr:
            out += [f"Failed: {kr['error']}", ""]
        if "weights_final_vs_uninterrupted" in kr:
            f = kr["weights_final_vs_uninterrupted"]
            noise = kr.get("run_to_run_noise_at_first_checkpoint", {})
            diff = ("bit-identical" if f.get("exact") else
                    f"relative L2 {f.get('rel_l2', float('nan')):.2e}, max |Δ| {f.get('max_abs', float('nan')):.2e}")
            out += [f"Resumed from {kr['resumed_from']} with `--resume`: final weights vs the uninterrupted run: {diff}"
                    f" (tolerance {kr['weights_rtol']:.0e}: {'same' if kr['same_weights'] else 'DIFFERENT'}). "
                    f"Two fresh runs at their first checkpoint: "
                    f"{'bit-identical' if noise.get('exact') else 'relative L2 ' + format(noise.get('rel_l2', float('nan')), '.2e')}.", ""]
    out += ["Commands of every run: `ddp_scaling.json` (`runs`).", ""]
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2, help="processes (GPUs) of the multi-GPU runs")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--out", required=True, help="folder for ddp_scaling.json/.md, configs and log tails")
    p.add_argument("--work-root", default=str(REPO / "work_dirs" / "ddp_scaling"),
                   help="work dirs and checkpoints (several GB for biformer_small); results recorded here are reused")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--cases", default=None, help=f"throughput cases (default {DEFAULT_CASES}); known: {sorted(CASES)}")
    p.add_argument("--eq-case", default=None, help=f"case of the equivalence and resume stages (default {DEFAULT_EQ_CASE})")
    p.add_argument("--warmup", type=int, default=20, help="iterations not timed (CUDA-graph capture, autotuning)")
    p.add_argument("--iters", type=int, default=50, help="timed iterations")
    p.add_argument("--eq-iters", type=int, default=50, help="iterations of the equivalence runs")
    p.add_argument("--eq-ckpt-interval", type=int, default=20, help="checkpoint interval of the equivalence runs")
    p.add_argument("--kill-at", type=int, default=None, help="iteration at which a rank is killed "
                   "(default: between the first and second checkpoint)")
    p.add_argument("--num-workers", type=int, default=None, help="data workers per process (default 2 on CUDA, 0 on CPU)")
    p.add_argument("--loss-rtol", type=float, default=None, help="relative loss tolerance (default 2e-2 bf16, 1e-4 fp32)")
    p.add_argument("--weights-rtol", type=float, default=None,
                   help="relative L2 tolerance, resumed vs uninterrupted weights (default 1e-3 on GPUs, 1e-6 on CPU)")
    p.add_argument("--run-timeout", type=float, default=420, help="seconds one training run may take")
    p.add_argument("--redo", action="store_true", help="ignore the results recorded in --work-root")
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(args.stages) - set(STAGES))
    if bad:
        p.error(f"unknown stages {bad}; choose from {list(STAGES)}")
    args.cases = args.cases.split(",") if args.cases else DEFAULT_CASES[args.device]
    args.eq_case = args.eq_case or DEFAULT_EQ_CASE[args.device]
    unknown = sorted(set(args.cases + [args.eq_case]) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    if args.gpus < 1:
        p.error(f"--gpus must be >= 1, got {args.gpus}")
    if args.kill_at is None:
        args.kill_at = min(args.eq_ckpt_interval + max(1, args.eq_ckpt_interval // 2), args.eq_iters - 1)
    if not 0 < args.eq_ckpt_interval <= args.kill_at < args.eq_iters:
        p.error(f"need 0 < --eq-ckpt-interval ({args.eq_ckpt_interval}) <= --kill-at ({args.kill_at}) < --eq-iters "
                f"({args.eq_iters}): the killed run must have saved a checkpoint and not yet finished")
    if args.num_workers is None:
        args.num_workers = 2 if args.device == "cuda" else 0
    if args.device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count < args.gpus:
            p.error(f"--gpus {args.gpus} but {count} CUDA device(s) visible (CUDA_VISIBLE_DEVICES="
                    f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use a machine with {args.gpus} GPUs or --gpus {count}")
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    m = Measurement(args)
    m.log(f"device {args.device}, {args.gpus} processes, stages {args.stages}, work root {m.root}, out {m.out}")
    for stage in STAGES:
        if stage in args.stages:
            m.log(f"stage {stage}")
            getattr(m, stage)()
    m.save()
    m.log(f"wrote {m.out / 'ddp_scaling.json'} and {m.out / 'ddp_scaling.md'}")
    print(markdown(m.state))
    return m.state


if __name__ == "__main__":
    main()
