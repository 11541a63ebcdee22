"""visionattn.cuda_graph: capture per input signature, replay, LRU, output ownership, per-module runners."""
import gc

import pytest
import torch

from visionattn.cuda_graph import (_MODULE_RUNNERS, CUDAGraphRunner, TrainingGraph, graph_runner, graph_runners,
                                   module_key)


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


def _double(module, x):
    return module(x) * 2


def test_graph_runner_is_kept_per_module_and_name_without_keeping_the_module():
    lin = torch.nn.Linear(4, 4)
    runner = graph_runner(lin, "double", _double)
    assert graph_runner(lin, "double", _double) is runner and graph_runners(lin) == {"double": runner}
    assert graph_runner(torch.nn.Linear(4, 4), "double", _double) is not runner
    with pytest.raises(ValueError, match="CUDA tensor"):  # the runner itself refuses CPU inputs
        runner(torch.ones(1, 4))
    key = module_key(lin)
    assert module_key(lin.double()) != key  # moved/re-cast parameters: a new capture
    assert module_key(lin.eval()) != module_key(lin.train())
    dead = torch.nn.Linear(4, 4)
    graph_runner(dead, "double", _double)
    count = len(_MODULE_RUNNERS)
    del dead
    gc.collect()
    assert len(_MODULE_RUNNERS) == count - 1  # the cache held it weakly


class _Net(torch.nn.Module):
    """Dict output with a list, an int tuple and an output without grad, as MatchStereo's."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.lin = torch.nn.Linear(4, 2)
        self.unused = torch.nn.Linear(2, 2)  # parameters without gradient are allowed

    def forward(self, x, y):
        f = self.bn(self.conv(x + y)).relu()
        return {"map": f, "fields": [f.mean((2, 3)), self.lin(f.mean((2, 3)))], "padding": (0, 3),
                "mask": f > 0}


def _loss(out):
    return out["map"].square().mean() + sum(t.sum() for t in out["fields"])


def test_training_graph_runs_eager_off_cuda():
    net = _Net()
    graph = TrainingGraph(net)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    out = graph(x, y)
    assert out["padding"] == (0, 3) and len(graph) == 0  # CPU: the module itself, nothing captured
    _loss(out).backward()
    assert net.conv.weight.grad is not None
    with pytest.raises(ValueError, match="max_graphs"):
        TrainingGraph(net, max_graphs=0)


def test_training_graph_bookkeeping_without_a_gpu(monkeypatch):
    """TrainingGraph's own logic (signatures, the cleared-gradient check over its cached parameter list,
    clear()) with the capture replaced by the module itself, so that it runs on a CPU."""
    from visionattn import cuda_graph

    monkeypatch.setattr(cuda_graph, "_replays", lambda module, args: True)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", lambda fn, samples, allow_unused_input: fn)
    net = _Net()
    graph = TrainingGraph(net)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    _loss(graph(x, y)).backward()
    assert len(graph) == 1 and net.conv.weight.grad is not None
    with pytest.raises(RuntimeError, match="set_to_none"):  # gradients left from the last step
        graph(x, y)
    net.zero_grad(set_to_none=True)
    net.unused.bias.grad = torch.zeros(2)  # any parameter's gradient counts, not only the first one's
    with pytest.raises(RuntimeError, match="set_to_none"):
        graph(x, y)
    net.zero_grad(set_to_none=True)
    graph(x, y)
    assert len(graph) == 1  # same signature: no new capture
    graph(x[:1], y[:1])
    assert len(graph) == 2
    net.double()  # same parameter objects, new memory: a new signature, captured anew
    net.zero_grad(set_to_none=True)
    graph(x.double(), y.double())
    assert len(graph) == 2 and all(p.dtype == torch.float64 for p in graph._params)
    graph.clear()
    assert len(graph) == 0 and graph._params is None


@pytest.mark.cuda
def test_training_graph_equals_eager_over_optimizer_steps():
    torch.manual_seed(0)
    eager, graphed_net = _Net().cuda(), _Net().cuda()
    graphed_net.load_state_dict(eager.state_dict())
    graph = TrainingGraph(graphed_net)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, graphed_net)]
    xs = [(torch.randn(2, 3, 8, 8, device="cuda"), torch.randn(2, 3, 8, 8, device="cuda")) for _ in range(4)]
    # the graph's warm-up runs 3 training forwards, which advance BatchNorm's running statistics:
    # compare the eager model after the same number of forwards
    with torch.no_grad():
        for _ in range(3):
            eager(*xs[0])
    for x, y in xs:
        outs = []
        for m, fn, opt in ((eager, eager, opts[0]), (graphed_net, graph, opts[1])):
            opt.zero_grad(set_to_none=True)
            out = fn(x, y)
            _loss(out).backward()
            outs.append(out)
            opt.step()
        assert outs[1]["padding"] == (0, 3) and outs[1]["mask"].dtype == torch.bool
        torch.testing.assert_close(outs[1]["map"], outs[0]["map"])
        for a, b in zip(eager.parameters(), graphed_net.parameters()):
            torch.testing.assert_close(a, b)  # same gradients, so the same parameters after each step
    assert len(graph) == 1
    with pytest.raises(RuntimeError, match="set_to_none"):  # .grad left from the last step
        graph(*xs[0])
    opts[1].zero_grad(set_to_none=True)
    graph(torch.randn(1, 3, 8, 8, device="cuda"), torch.randn(1, 3, 8, 8, device="cuda"))
    assert len(graph) == 2  # a new input shape is a new capture
    graphed_net.eval()
    with torch.no_grad():
        graph(*xs[0])
    assert len(graph) == 2  # eval / no-grad calls run eagerly
