"""`torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch` on CPU (gloo)."""
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_cpu_ranks_agree_on_weights(tiny_config, tmp_path, tool_env):
    cfg = tiny_config("custom_imports = dict(imports=['rank_weights_hook'], allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='SaveRankWeightsHook')]\n"
                      "train_dataloader = dict(num_workers=0)\n"
                      "train_cfg = dict(max_iters=3, val_interval=3)\n"
                      "default_hooks = dict(checkpoint=dict(interval=3))\n")
    work = tmp_path / "work"
    env = dict(tool_env, PYTHONPATH=f"{HERE}:{tool_env['PYTHONPATH']}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools" / "train.py"), str(cfg), "--launcher", "pytorch", "--work-dir", str(work)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = [torch.load(work / f"final_rank{r}.pt") for r in (0, 1)]
    initial = torch.load(work / "initial_rank0.pt")
    assert final[0]["world_size"] == final[1]["world_size"] == 2
    for name, p0 in final[0]["params"].items():
        assert torch.equal(p0, final[1]["params"][name]), name
    changed = [n for n, p in final[0]["params"].items() if not torch.equal(p, initial["params"][n])]
    assert len(changed) == len(initial["params"])  # every parameter trained
    assert (work / "iter_3.pth").is_file()
