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


class _AmpNet(torch.nn.Module):
    """Linear and convolution layers (torch's and the library's), channels_last, a norm in between,
    a layer used twice and one whose forward computes with its weight first."""

    def __init__(self):
        from visionattn.models.bias_grad_layers import Conv2d

        super().__init__()
        self.conv = Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.twice = torch.nn.Linear(6, 6)
        self.scaled = _ScaledLinear(6, 6)

    def forward(self, x):
        y = self.norm(self.fc(self.dw(self.conv(x)).permute(0, 2, 3, 1)))
        return {"y": self.scaled(self.twice(self.twice(y))), "stride": 2}


class _ScaledLinear(torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight / self.weight.norm(), self.bias)


def _amp_grads(fn, net, x, device):
    net.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = fn(x)
        y = (fn.rebuild(out) if isinstance(out, tuple) else out)["y"]  # _TensorLeaves: tensors only
    y.float().square().sum().backward()
    return y.detach().clone(), {n: p.grad.clone() for n, p in net.named_parameters()}


def test_autocast_weights_cast_together_give_autocast_s_values():
    """Under autocast a captured module runs on weights cast in one pass: the plain layers' weights
    that one operation uses, in their own layouts, with autocast's values and gradients."""
    from visionattn.cuda_graph import _TensorLeaves, autocast_weights, cast_together

    torch.manual_seed(0)
    net = _AmpNet().to(memory_format=torch.channels_last)
    assert list(autocast_weights(net)) == ["conv.weight", "conv.bias", "dw.weight", "dw.bias", "fc.weight",
                                           "fc.bias", "twice.weight", "twice.bias"]  # not `scaled`: own forward
    normed = torch.nn.Sequential(torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(2, 2)),
                                 torch.nn.Linear(2, 2))
    normed[1].register_forward_pre_hook(lambda module, args: None)
    assert list(autocast_weights(normed)) == []  # weights computed before the forward: left to autocast
    copies = cast_together([net.dw.weight, net.fc.weight], torch.bfloat16)
    assert copies[0].stride() == net.dw.weight.stride() and net.dw.weight.stride()[1] == 1  # channels_last kept
    assert torch.equal(copies[1], net.fc.weight.to(torch.bfloat16))
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y_ref, g_ref = _amp_grads(net, net, x, "cpu")
    leaves = _TensorLeaves(net, torch.bfloat16)
    _amp_grads(leaves, net, x, "cpu")  # the first call finds which weights one operation uses
    assert list(leaves.cast) == ["conv.weight", "conv.bias", "dw.weight", "dw.bias", "fc.weight", "fc.bias"]
    y, grads = _amp_grads(leaves, net, x, "cpu")
    assert torch.equal(y, y_ref) and leaves.leaves[-1] == 2
    for name, grad in g_ref.items():
        assert torch.equal(grads[name], grad), name
        assert grads[name].stride() == getattr(net, name.split(".")[0]).get_parameter(name.split(".")[1]).stride()


@pytest.mark.cuda
def test_training_graph_under_autocast_casts_weights_together():
    from visionattn.ops.dispatch import use_impl

    torch.manual_seed(0)
    eager = _AmpNet().cuda().to(memory_format=torch.channels_last)
    graphed_net = _AmpNet().cuda().to(memory_format=torch.channels_last)
    graphed_net.load_state_dict(eager.state_dict())
    graph = TrainingGraph(graphed_net)
    x = torch.randn(4, 3, 9, 9, device="cuda").contiguous(memory_format=torch.channels_last)
    with use_impl("bias_grad:reference"):  # the same bias reductions in both
        y_ref, g_ref = _amp_grads(eager, eager, x, "cuda")
        y, grads = _amp_grads(graph, graphed_net, x, "cuda")
        y2, grads2 = _amp_grads(graph, graphed_net, x, "cuda")
    leaves, = graph._graphs.values()
    assert list(leaves.cast) == ["conv.weight", "conv.bias", "dw.weight", "dw.bias", "fc.weight", "fc.bias"]
    # bf16 products: cuBLAS / cuDNN may pick other kernels inside a capture than eagerly (the values
    # of the casts themselves are compared exactly on the CPU, above)
    for out, gs in ((y, grads), (y2, grads2)):
        torch.testing.assert_close(out, y_ref)
        for name, grad in g_ref.items():
            torch.testing.assert_close(gs[name], grad, atol=2e-3, rtol=2e-2, msg=name)
            assert gs[name].stride() == graphed_net.get_parameter(name).stride(), name
