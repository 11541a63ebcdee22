"""consistency_mask: the reference against a float64 formula written out pixel by pixel, and the
Triton kernel (interpreter on CPU, CUDA) against the reference."""
import os

import pytest
import torch

from visionattn.ops import consistency_mask as cm
from triton_interpreter import run_interpreted

# (B, H, W, field layout): a 1-pixel map, single rows/columns, sizes not a multiple of the block, a
# channels-first map seen channels-last (strided), disparities reaching past the borders
CASES = [(1, 5, 7, "contiguous"), (2, 3, 9, "channels_first"), (1, 1, 1, "contiguous"), (1, 1, 6, "contiguous"),
         (1, 9, 1, "channels_first"), (3, 17, 23, "contiguous")]


def _field(B, H, W, layout, dtype=torch.float32, device="cpu"):
    """A stereo-like pair: the second view's field roughly the negated first's, moved by it, plus noise;
    some pixels sampled outside the map."""
    g = torch.Generator().manual_seed(B * 100 + H * W)
    f = cm.example_inputs(batch=B, height=H, width=W)["field"]
    f[..., 0] *= (W + 2) / 60
    f += 0.7 * torch.randn(f.shape, generator=g)
    if layout == "channels_first":  # (2B, 2, H, W) storage, as a decoder's output permuted to channels-last
        f = f.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return f.to(device, dtype)


def _round_trip_error(field):
    """|field + other| in L1 per pixel, float64, sampled tap by tap (bilinear, zeros outside)."""
    f = field.double().cpu()
    N, H, W, _ = f.shape
    err = torch.empty(N, H, W, dtype=torch.float64)
    for b in range(N):
        o = f[(b + N // 2) % N]
        for i in range(H):
            for j in range(W):
                # a map one pixel wide (high) is sampled at x = 0 (y = 0): align_corners=True's scale is size - 1
                x = j + f[b, i, j, 0].item() if W > 1 else 0.0
                y = i + f[b, i, j, 1].item() if H > 1 else 0.0
                x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
                other = torch.zeros(2, dtype=torch.float64)
                for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    if 0 <= xi < W and 0 <= yi < H:
                        other += (1 - abs(x - xi)) * (1 - abs(y - yi)) * o[yi, xi]
                err[b, i, j] = (f[b, i, j] + other).abs().sum()
    return err


def _agree(mask, err, threshold, slack):
    """The mask is err < threshold, except where err lies within ``slack`` of the threshold."""
    want = (err < threshold).to(mask.device)
    clear = ((err - threshold).abs() > slack).to(mask.device)
    got = mask[..., 0] > 0
    assert torch.equal(got[clear], want[clear]), f"{(got != want)[clear].sum().item()} pixels differ"
    assert 0 < want.double().mean() < 1 or want.numel() <= 2  # the cases test both outcomes


@pytest.mark.parametrize("case", CASES)
def test_reference_is_the_formula(case):
    field = _field(*case)
    for f in (field, field.double()):
        mask = cm.consistency_mask(f, 2.0, impl="reference")
        assert mask.shape == (*f.shape[:3], 1) and mask.dtype == f.dtype and mask.is_contiguous()
        _agree(mask, _round_trip_error(f), 2.0, 1e-5)


def _compare(device, dtype, case):
    field = _field(*case, dtype=dtype, device=device)
    ref = cm.consistency_mask(field.float(), 2.0, impl="reference")
    out = cm.consistency_mask(field, 2.0, impl="triton")
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    # the same float32 operations in the same order: equal except within rounding of the threshold
    clear = ((_round_trip_error(field) - 2.0).abs() > 1e-4)[..., None].to(device)
    assert torch.equal(out[clear], ref[clear]), case
    half = cm.consistency_mask(field, 2.0, dtype=torch.float16, impl="triton")
    assert half.dtype == torch.float16 and torch.equal(half.float(), out)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    _compare("cpu", torch.float32, case)
    _compare("cpu", torch.float16, case)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
def test_triton_interpreter_custom_op():
    """The registered op: schema and fake kernel; traced as one node under torch.compile."""
    field = _field(1, 5, 7, "channels_first")
    torch.library.opcheck(torch.ops.visionattn.consistency_mask.default, (field, 2.0, torch.float16),
                          test_utils=("test_schema", "test_faketensor"))
    fn = torch.compile(lambda f: cm.consistency_mask(f, 2.0, impl="triton"), backend="aot_eager", fullgraph=True)
    assert torch.equal(fn(field), cm.consistency_mask(field, 2.0, impl="reference"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
def test_triton_interpreter_nonfinite():
    field = _field(1, 4, 6, "contiguous")
    field[0, 1, 1, 0] = float("nan")
    field[1, 2, 2, 1] = 1e30
    field[0, 3, 4, 0] = -float("inf")
    out = cm.consistency_mask(field, 3.0, impl="triton")
    assert torch.equal(out, cm.consistency_mask(field, 3.0, impl="reference"))
    assert out[0, 1, 1, 0] == 0 and out[1, 2, 2, 0] == 0 and out[0, 3, 4, 0] == 0


def test_triton_interpreter():
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases or test_triton_interpreter_nonfinite or "
                    "test_triton_interpreter_custom_op", expect=f"{len(CASES) + 2} passed", timeout=600)


def test_contract_errors_name_the_fix():
    field = _field(1, 3, 4, "contiguous")
    with pytest.raises(ValueError, match=r"\(2B, H, W, 2\)"):
        cm.consistency_mask(field[:1], 2.0)
    with pytest.raises(ValueError, match=r"\(2B, H, W, 2\)"):
        cm.consistency_mask(field[..., :1], 2.0)
    with pytest.raises(ValueError, match=r"H, W >= 1"):
        cm.consistency_mask(field[:, :0], 2.0)
    with pytest.raises(ValueError, match="threshold"):
        cm.consistency_mask(field, 0.0)
    with pytest.raises(ValueError, match="pixel_grid"):
        cm.consistency_mask(field, 2.0, grid=cm.pixel_grid(4, 3, field), impl="reference")
    # the mask has no gradient, whatever the field's
    assert not cm.consistency_mask(field.requires_grad_(), 2.0).requires_grad


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_cuda(dtype):
    for case in CASES:
        _compare("cuda", dtype, case)
    # a 4K pair's 1/4 level: equal to the reference except within rounding of the threshold
    d = cm.example_inputs(device="cuda", dtype=dtype)
    field, thr = d["field"], d["threshold"]
    out = cm.consistency_mask(field, thr, impl="triton")
    ref = cm.consistency_mask(field.float(), thr, impl="reference")
    assert 0.2 < ref.mean().item() < 0.8
    differ = (out != ref).sum().item()
    assert differ <= 1e-5 * out.numel(), differ
