"""visionattn.cuda_graph: capture per input signature, replay, LRU, output ownership."""
import pytest
import torch

from visionattn.cuda_graph import CUDAGraphRunner


def test_rejects_cpu_tensors_and_bad_settings():
    runner = CUDAGraphRunner(lambda x: x * 2)
    with pytest.raises(ValueError, match="CUDA tensor"):
        runner(torch.ones(2))
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphRunner(lambda x: x, max_graphs=0)


@pytest.mark.cuda
def test_replay_per_signature_and_lru():
    lin = torch.nn.Linear(8, 4).cuda()
    runner = CUDAGraphRunner(lambda x: {"y": lin(x).relu(), "s": [x.sum()]}, max_graphs=2)
    for n in (3, 5, 3, 7):
        x = torch.randn(n, 8, device="cuda")
        out = runner(x)
        torch.testing.assert_close(out["y"], lin(x).relu().detach())
        torch.testing.assert_close(out["s"][0], x.sum())
    assert len(runner) == 2  # 3 and 5 captured, 5 dropped when 7 came (3 was used more recently)
    kept = runner(torch.ones(3, 8, device="cuda"))["y"]
    again = runner(torch.zeros(3, 8, device="cuda"))["y"]
    assert not torch.equal(kept, again)  # clone_outputs: earlier results are not overwritten
    shared = CUDAGraphRunner(lambda x: x + 1, clone_outputs=False)
    a = shared(torch.zeros(2, device="cuda"))
    shared(torch.ones(2, device="cuda"))
    assert torch.equal(a, torch.full((2,), 2.0, device="cuda"))  # the graph's own buffer
