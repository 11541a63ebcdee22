"""bias_grad: a layer's output gradient summed per channel — the Triton column sum (CPU interpreter,
CUDA) against PyTorch's sum, and the Linear / Conv2d layers that use it against nn.Linear / nn.Conv2d."""
import contextlib
import os

import pytest
import torch
import torch.nn as nn

from visionattn.models import bias_grad_layers as layers
from visionattn.ops import bias_grad as bg
from visionattn.ops._triton import interpreting
from visionattn.ops.dispatch import recording_graph
from triton_interpreter import run_interpreted

# (shape, channel axis): channels not a power of two, more than one 64-channel tile (200), one row,
# no rows, token maps with channels last, channels_last convolution maps
CASES = [((37, 13), -1), ((5, 200), -1), ((1, 8), -1), ((0, 16), -1), ((2, 5, 3, 13), -1), ((2, 13, 5, 3), 1),
         ((1, 200, 2, 3), 1), ((3, 70, 1, 1), 1)]


def _grad(shape, dim, dtype=torch.float32, device="cpu", seed=0):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    return t.contiguous(memory_format=torch.channels_last) if dim == 1 else t


def test_reference_is_the_bias_gradient_autograd_computes():
    for shape, dim in CASES:
        g = _grad(shape, dim)
        bias = torch.zeros(shape[dim], requires_grad=True)
        view = [1] * len(shape)
        view[dim] = -1
        (torch.zeros(shape) + bias.view(view)).backward(g)
        torch.testing.assert_close(bg.bias_grad(g, dim, impl="reference"), bias.grad)
    assert bg.IMPLS == ("triton", "reference")


def test_bad_inputs_name_the_value():
    g = torch.ones(4, 6)
    with pytest.raises(ValueError, match=r"dim=2 is not an axis of grad \(4, 6\)"):
        bg.bias_grad(g, 2)
    with pytest.raises(ValueError, match="dim=1.0"):
        bg.bias_grad(g, 1.0)
    with pytest.raises(ValueError, match="floating"):
        bg.bias_grad(g.long())
    with pytest.raises(ValueError, match="unknown impl"):
        bg.bias_grad(g, impl="cuda")


def test_auto_takes_the_kernel_for_rows_only():
    expected = interpreting()
    assert bg._triton_supports(_grad((2, 5, 3, 13), -1), -1) == expected
    assert bg._triton_supports(_grad((2, 13, 5, 3), 1), 1) == expected
    assert not bg._triton_supports(_grad((2, 13, 5, 3), 1).contiguous(), 1)  # NCHW: the reference
    assert not bg._triton_supports(_grad((4, 6), -1).t(), -1)  # channels not innermost
    assert not bg._triton_supports(_grad((2, 5, 3, 13), -1), 2)  # an inner axis of a contiguous map
    # the layers take the kernel only while a CUDA graph records them (eagerly: PyTorch's reduction)
    x, b = torch.ones(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    assert not layers._routes_bias_grad(x, b)
    with recording_graph():
        assert layers._routes_bias_grad(x, b) == expected
        assert not layers._routes_bias_grad(x, None) and not layers._routes_bias_grad(x, b.detach())
        with torch.no_grad():
            assert not layers._routes_bias_grad(x, b)


def _layers_match_torch(device, dtype=torch.float32, autocast=None, atol=1e-5, rtol=1e-5):
    """Linear and depthwise / dense Conv2d: outputs and every gradient equal nn.Linear's / nn.Conv2d's."""
    g = torch.Generator().manual_seed(1)
    cases = [(layers.Linear(24, 40), nn.Linear(24, 40), torch.randn(2, 7, 5, 24, generator=g)),
             (layers.Conv2d(16, 16, 5, padding=2, groups=16), nn.Conv2d(16, 16, 5, padding=2, groups=16),
              torch.randn(2, 16, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)),
             (layers.Conv2d(6, 10, 3, stride=2, padding=1), nn.Conv2d(6, 10, 3, stride=2, padding=1),
              torch.randn(2, 6, 8, 8, generator=g).contiguous(memory_format=torch.channels_last))]
    for ours, theirs, x in cases:
        ours.load_state_dict(theirs.state_dict())  # same keys
        results = []
        for layer in (ours, theirs):
            layer = layer.to(device, dtype)
            if x.dim() == 4:
                layer = layer.to(memory_format=torch.channels_last)
            xi = x.to(device, dtype).requires_grad_()
            with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                out = layer(xi)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out))
            results.append([out, xi.grad, layer.weight.grad, layer.bias.grad])
        for a, b in zip(*results):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_layers_are_torch_layers_on_the_cpu():
    _layers_match_torch("cpu")
    with pytest.raises(ValueError, match="padding='same'"):
        layers.Conv2d(4, 4, 3, padding="same")


def _triton_checks(device):
    for shape, dim in CASES:
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -7)):
            g = _grad(shape, dim, dtype, device)
            out = bg.bias_grad(g, dim, impl="triton")
            assert out.shape == (shape[dim],) and out.dtype == dtype
            expected = bg.bias_grad_reference(g.float(), dim)  # fp32 sums, one rounding
            torch.testing.assert_close(out.float(), expected, atol=tol * max(1.0, expected.abs().max().item()),
                                       rtol=tol)
            assert torch.equal(out, bg.bias_grad(g, dim, impl="triton"))  # a fixed split: deterministic
    # the op traces: torch.compile without graph breaks
    g = _grad((2, 5, 3, 13), -1, device=device)
    compiled = torch.compile(lambda t: bg.bias_grad(t, impl="triton"), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(g), bg.bias_grad_reference(g), atol=1e-5, rtol=1e-5)
    # the layers on the fast path: equal to PyTorch's in fp32, and under bf16 autocast
    with recording_graph():
        assert layers._routes_bias_grad(g.requires_grad_(), torch.zeros(13, device=device, requires_grad=True))
        _layers_match_torch(device)
        _layers_match_torch(device, autocast=torch.bfloat16, atol=2e-2, rtol=2e-2)
    _biformer_gradients_match(device)


def _biformer_gradients_match(device):
    """A small BiFormer's parameter gradients with the layers routed (as TrainingGraph records them)
    equal its eager ones: every Linear / depthwise-conv bias of the block, the chunked qkv and the
    permuted channels_last maps included. Its other ops stay on their references."""
    from visionattn.models.backbones.biformer import BiFormer
    from visionattn.ops.dispatch import use_impl

    torch.manual_seed(0)
    model = BiFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), num_classes=10, n_win=2).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    grads = []
    for recording in (False, True):
        model.zero_grad(set_to_none=True)
        with use_impl("bilevel_routing_attention:reference+layer_norm:reference"), \
                (recording_graph() if recording else contextlib.nullcontext()):
            model(x).logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_kernel_in_interpreter")
def test_triton_interpreter_cases():
    _triton_checks("cpu")


def test_triton_kernel_in_interpreter():
    """Kernels, determinism, compile and the layers on CPU via TRITON_INTERPRET=1 (a fresh process)."""
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases or test_auto_takes", expect="2 passed",
                    timeout=600)


@pytest.mark.cuda
def test_triton_cuda():
    _triton_checks("cuda")
    kw = bg.example_inputs("cuda")
    assert bg._triton_supports(kw["grad"], -1)
    torch.testing.assert_close(bg.bias_grad(**kw).float(), bg.bias_grad_reference(kw["grad"].float(), -1),
                               rtol=2 ** -7, atol=2.0)  # |sums| of 200k unit normals reach ~1,500


@pytest.mark.cuda
def test_training_graph_takes_the_kernel_and_matches_eager():
    """Inside TrainingGraph the layers route their bias gradients to the kernel; eagerly they do not;
    the gradients agree."""
    from unittest import mock

    from visionattn.cuda_graph import TrainingGraph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = layers.Linear(8, 16)

        def forward(self, x):
            return self.fc(self.conv(x).permute(0, 2, 3, 1))

    torch.manual_seed(0)
    eager, graphed = Net().cuda(), Net().cuda()
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(4, 8, 12, 12, device="cuda").contiguous(memory_format=torch.channels_last)
    with mock.patch.object(layers, "bias_grad", wraps=layers.bias_grad) as spy:
        eager(x).square().mean().backward()
        assert spy.call_count == 0
        TrainingGraph(graphed)(x).square().mean().backward()
        assert spy.call_count >= 2  # warm-up and capture ran the kernel path
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)
