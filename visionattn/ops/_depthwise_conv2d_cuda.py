"""CUDA C kernel of the depth-wise 2-D convolution with its epilogue, on channels_last maps,
compiled at first use by NVRTC (``torch.cuda._compile_kernel``; NVRTC ships with PyTorch's CUDA
wheels, so no compiler needs to be installed).

Why CUDA C next to the Triton kernel: at a 7x7 kernel the convolution is bound by instructions,
not bytes (49 multiply-adds per output), and the work per output has to come out of registers. One
thread holds ``VEC`` channels of a strip of ``TW`` output pixels of one row; it reads each of the
``TW + K - 1`` input pixels of a kernel row once, converts them to float32 once and adds each into
the ``K`` outputs it touches (a register sliding window, which Triton's tensors cannot express: its
kernel loads every tap's shifted tile again). A block holds ``CG`` channel groups x ``NT``
consecutive strips, so the ``K`` rows a strip reads are shared with its neighbours through L1.
The epilogue (bias, GELU, per-channel scale, residual) is applied to the float32 sums, with one
rounding at the store. On an H200 this runs FFNet's 7x7 token-mixer convs with their epilogue in
about 70 % of the time of cuDNN's convolution plus ``channel_bias_act``.

The launch shape that wins depends on the map (channels, width, kernel): the first call for a new
shape times a few candidates and keeps the fastest (as ``cudnn.benchmark`` does). Inside a CUDA
graph capture, where nothing can be timed, an untuned shape takes the first candidate. A launch is
one driver call (``cuLaunchKernel``) through a handle opened once: eager networks issue these
launches from Python, and PyTorch's generic launcher reopens the driver library at every call.
Inference only: the op sends calls that need gradients to its other implementations.
"""
import ctypes
import functools
import threading
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

_SOURCE = r"""
typedef unsigned short u16;
struct bf16_t { u16 v; };
struct f16_t { u16 v; };
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t h) { return __uint_as_float(((unsigned)h.v) << 16); }
__device__ __forceinline__ float to_f32(f16_t h) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.v)); return f; }
__device__ __forceinline__ void store_f32(float v, float* o) { *o = v; }
__device__ __forceinline__ void store_f32(float v, bf16_t* o) { asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(o->v) : "f"(v)); }
__device__ __forceinline__ void store_f32(float v, f16_t* o) { asm("cvt.rn.f16.f32 %0, %1;" : "=h"(o->v) : "f"(v)); }

typedef TYPE T;
struct __align__(VEC * sizeof(T)) Vec { T v[VEC]; };

// x, res, out: (B, H, W, C) memory of channels_last maps; taps: (K*K, C), row-major over (kh, kw);
// bias, scale: (C,). Thread (cv, item): channels [cv*VEC, cv*VEC+VEC) of output pixels
// [strip*TW, strip*TW+TW) of row h, where item = h * strips + strip.
extern "C" __global__ void __launch_bounds__(CG * NT) depthwise_conv2d_nhwc(
    const T* __restrict__ x, const T* __restrict__ taps, const T* __restrict__ bias, const T* __restrict__ scale,
    const T* __restrict__ res, T* __restrict__ out, int H, int W, int C, int strips)
{
  const int cv = blockIdx.y * CG + threadIdx.x;
  const int item = blockIdx.x * NT + threadIdx.y;
  if (cv * VEC >= C || item >= H * strips) return;
  const long long img = (long long)blockIdx.z * H;
  const int h = item / strips, w0 = (item % strips) * TW, c0 = cv * VEC;
  float acc[TW][VEC];
#pragma unroll
  for (int o = 0; o < TW; ++o)
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[o][v] = 0.f;
#pragma unroll KH_UNROLL
  for (int kh = 0; kh < K; ++kh) {
    const int hh = h + kh - K / 2;
    if (hh < 0 || hh >= H) continue;
    const T* row = x + (img + hh) * W * C + c0;
    float wk[K][VEC];
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const Vec t = *reinterpret_cast<const Vec*>(taps + (kh * K + kw) * C + c0);
#pragma unroll
      for (int v = 0; v < VEC; ++v) wk[kw][v] = to_f32(t.v[v]);
    }
#pragma unroll
    for (int j = 0; j < TW + K - 1; ++j) {  // input pixel w0 + j - K/2 feeds outputs o = j - kw
      const int ww = w0 + j - K / 2;
      float xv[VEC];
      if (ww >= 0 && ww < W) {
        const Vec q = *reinterpret_cast<const Vec*>(row + (long long)ww * C);
#pragma unroll
        for (int v = 0; v < VEC; ++v) xv[v] = to_f32(q.v[v]);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) xv[v] = 0.f;
      }
#pragma unroll
      for (int o = 0; o < TW; ++o) {
        const int kw = j - o;  // resolved at compile time: the loops are unrolled
        if (kw >= 0 && kw < K) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[o][v] = fmaf(xv[v], wk[kw][v], acc[o][v]);
        }
      }
    }
  }
  const long long base = (img + h) * W * C + c0;
#pragma unroll
  for (int o = 0; o < TW; ++o) {
    if (w0 + o >= W) break;
    const long long at = base + (long long)(w0 + o) * C;
#if HAS_RES
    const Vec r = *reinterpret_cast<const Vec*>(res + at);
#endif
    Vec q;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      float y = acc[o][v];
#if HAS_BIAS
      y += to_f32(bias[c0 + v]);
#endif
#if GELU
      y = 0.5f * y * (1.f + erff(y * 0.7071067811865476f));
#endif
#if HAS_SCALE
      y *= to_f32(scale[c0 + v]);
#endif
#if HAS_RES
      y += to_f32(r.v[v]);
#endif
      store_f32(y, &q.v[v]);
    }
    *reinterpret_cast<Vec*>(out + at) = q;
  }
}
"""

_C_TYPES = {torch.float32: "float", torch.float16: "f16_t", torch.bfloat16: "bf16_t"}
#: launch shapes tried on a new map: (bytes per thread's channel vector, threads per block, most
#: channel groups per block, kernel rows unrolled (0: all)); the first is the default under capture
CANDIDATES: Tuple[Tuple[int, int, int, int], ...] = (
    (8, 256, 32, 1), (8, 256, 8, 1), (8, 128, 8, 1), (8, 128, 32, 0), (16, 128, 32, 0))
MAX_GRID_Z = 65535  # the batch is the grid's z axis

_lock = threading.Lock()
_plans: Dict[tuple, "_Plan"] = {}  # (device, dtype, shape, K, epilogue, alignment) -> tuned plan
_taps_of = WeakIdKeyDictionary()  # weight tensor -> ((version, storage, dtype, shape), its taps)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether NVRTC can compile this kernel here and the driver can launch it (a GPU, and PyTorch's
    private ``torch.cuda._compile_kernel`` with the parts of it this module uses)."""
    if not (torch.cuda.is_available() and hasattr(torch.cuda, "_compile_kernel")):
        return False
    try:
        probe = _kernel(torch.cuda.current_device(), torch.float32, 3, 1, 4, 1, 1, 0, False, False, False, False)
        return probe.func is not None and _driver_launch() is not None  # (AttributeError: another torch)
    except Exception:  # noqa: BLE001 - no NVRTC library, a driver that cannot load its output, another torch
        return False


@functools.lru_cache(maxsize=None)
def _kernel(device: int, dtype: torch.dtype, K: int, VEC: int, TW: int, CG: int, NT: int, kh_unroll: int,
            has_bias: bool, gelu: bool, has_scale: bool, has_res: bool):
    """The kernel compiled for these constants and loaded on GPU ``device`` (a module belongs to one
    device's context)."""
    defines = dict(TYPE=_C_TYPES[dtype], K=K, VEC=VEC, TW=TW, CG=CG, NT=NT, KH_UNROLL=kh_unroll or K,
                   HAS_BIAS=int(has_bias), GELU=int(gelu), HAS_SCALE=int(has_scale), HAS_RES=int(has_res))
    source = "".join(f"#define {k} {v}\n" for k, v in defines.items()) + _SOURCE
    with torch.cuda.device(device):
        return torch.cuda._compile_kernel(source, "depthwise_conv2d_nhwc")


def _vector(C: int, elem: int, vec_bytes: int, *tensors: torch.Tensor) -> int:
    """Channels per thread: ``vec_bytes`` worth, halved until it divides C and every pointer's alignment."""
    vec = max(vec_bytes // elem, 1)
    while vec > 1 and (C % vec or any(t.data_ptr() % (vec * elem) for t in tensors)):
        vec //= 2
    return vec


def strip_width(W: int) -> int:
    """Output pixels per thread along a row: 4 to 8, the fewest wasted past the row's end (7 for
    FFNet's 56/28/14/7-wide maps, 8 for powers of two)."""
    return min(range(8, 3, -1), key=lambda tw: -(-W // tw) * tw - W)


def supports(x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Whether the kernel takes these inputs: CUDA channels_last x of a float dtype, the other
    tensors of x's dtype, a batch within the grid, and NVRTC available."""
    return (x.is_cuda and x.dtype in _C_TYPES and x.dim() == 4 and x.shape[0] <= MAX_GRID_Z
            and x.is_contiguous(memory_format=torch.channels_last)
            and all(t is None or t.dtype == x.dtype for t in others) and available())


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, K, K) -> (K*K, C), a tap's channels contiguous; kept while the weight tensor lives,
    until it changes: an in-place update bumps its version, ``module.to()`` swaps its storage."""
    if weight.is_inference():  # no version counter to key on
        return weight.reshape(weight.shape[0], -1).t().contiguous()
    key = (weight._version, weight.data_ptr(), weight.dtype, weight.shape)
    hit = _taps_of.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    taps = weight.reshape(weight.shape[0], -1).t().contiguous()
    if not torch.cuda.is_current_stream_capturing():  # a graph's memory is not ours to keep
        _taps_of[weight] = (key, taps)
    return taps


@functools.lru_cache(maxsize=1)
def _driver_launch():
    """The driver's ``cuLaunchKernel``, opened once."""
    launch = torch.cuda._utils._get_gpu_runtime_library().cuLaunchKernel
    launch.argtypes = ([ctypes.c_void_p] + [ctypes.c_uint] * 7  # function, grid, block, shared memory
                       + [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p])  # stream, args, extra
    return launch


class _Plan(NamedTuple):
    """One compiled kernel and its launch shape for one map shape."""
    kernel: object  # torch.cuda._utils._CudaKernel
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    ints: ctypes.Array  # H, W, C, strips (the kernel's int arguments, fixed per map shape)

    def __call__(self, x, taps, bias, scale, residual, out) -> None:
        ptrs = (ctypes.c_void_p * 6)(x.data_ptr(), taps.data_ptr(), (x if bias is None else bias).data_ptr(),
                                     (x if scale is None else scale).data_ptr(),
                                     (x if residual is None else residual).data_ptr(), out.data_ptr())
        p, i = ctypes.addressof(ptrs), ctypes.addressof(self.ints)
        params = (ctypes.c_void_p * 10)(p, p + 8, p + 16, p + 24, p + 32, p + 40, i, i + 4, i + 8, i + 12)
        launch = functools.partial(_driver_launch(), self.kernel.func, *self.grid, *self.block, 0,
                                   torch.cuda.current_stream(x.device).cuda_stream, params, None)
        if x.device.index == torch.cuda.current_device():
            result = launch()
        else:  # the driver launches into the current device's context
            with torch.cuda.device(x.device):
                result = launch()
        if result:
            torch.cuda._utils._check_cuda(result)


def _plan(candidate, x: torch.Tensor, K: int, vec_of: Tuple[torch.Tensor, ...], epilogue: Tuple[bool, ...]) -> _Plan:
    vec_bytes, threads, max_groups, kh_unroll = candidate
    B, C, H, W = x.shape
    vec = _vector(C, x.element_size(), vec_bytes, *vec_of)
    groups = C // vec
    cg = max(d for d in range(1, min(groups, max_groups) + 1) if groups % d == 0)
    nt = max(1, threads // cg)
    tw = strip_width(W)
    strips = -(-W // tw)
    return _Plan(_kernel(x.device.index, x.dtype, K, vec, tw, cg, nt, kh_unroll, *epilogue),
                 (-(-(H * strips) // nt), groups // cg, B), (cg, nt, 1), (ctypes.c_int * 4)(H, W, C, strips))


def _tuned_plan(key, x, K, vec_of, epilogue, run) -> _Plan:
    """The plan of the fastest candidate for ``key``, timed once per process (a sleep kernel keeps the
    GPU ahead of the host, so the events time the kernels, not Python's launches)."""
    if torch.cuda.is_current_stream_capturing():  # nothing can be timed (nor kept) inside a capture
        return _plan(CANDIDATES[0], x, K, vec_of, epilogue)
    times = []
    for candidate in CANDIDATES:
        plan = _plan(candidate, x, K, vec_of, epilogue)
        run(plan)  # compile and warm up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)
        start.record()
        for _ in range(5):
            run(plan)
        end.record()
        end.synchronize()
        times.append((start.elapsed_time(end), candidate))
    best = _plan(min(times)[1], x, K, vec_of, epilogue)
    with _lock:
        _plans[key] = best
    return best


def depthwise_conv2d_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            residual: Optional[torch.Tensor], scale: Optional[torch.Tensor], gelu: bool
                            ) -> torch.Tensor:
    """Channels_last x (B, C, H, W), weight (C, 1, K, K), K odd -> channels_last
    ``residual + scale * act(conv(x) + bias)`` of x's dtype (see :mod:`.depthwise_conv2d`)."""
    out = torch.empty_like(x, memory_format=torch.channels_last)
    taps = _taps(weight)
    bias = None if bias is None else bias.contiguous()
    scale = None if scale is None else scale.contiguous()
    K = weight.shape[-1]
    # the tensors read or written as vectors (taps too: for K = 1 they can be a view of the weight)
    vec_of = (x, out, taps) if residual is None else (x, out, taps, residual)
    epilogue = (bias is not None, gelu, scale is not None, residual is not None)
    # the pointers' 16-byte alignment is part of the key: it bounds the vector width
    key = (x.device, x.dtype, x.shape, K, epilogue, (x.data_ptr() | taps.data_ptr() | vec_of[-1].data_ptr()) % 16)
    plan = _plans.get(key)
    if plan is None:
        with torch.cuda.device(x.device):  # the timing events and the sleep kernel go to x's device
            plan = _tuned_plan(key, x, K, vec_of, epilogue, lambda p: p(x, taps, bias, scale, residual, out))
    plan(x, taps, bias, scale, residual, out)
    return out
