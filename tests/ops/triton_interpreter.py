"""The ops tests' way to run their Triton cases on the CPU interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined (at import), so the cases run in a fresh
pytest process with the variable set; each ops test file selects its interpreter cases."""
import os
import subprocess
import sys


def run_interpreted(test_file: str, *select: str, expect: str = "passed", timeout: int = 300) -> None:
    """pytest ``test_file`` under ``TRITON_INTERPRET=1`` with the selection ``select`` (``"-k", ...``,
    ``"-m", ...``); fails with the end of its output unless it passes and prints ``expect``."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file, *select],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and expect in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def ptx_for_hopper(kernel, signature: dict, constexprs: dict, num_warps: int = 4) -> str:
    """PTX of a Triton ``kernel`` compiled for sm_90 without a GPU: catches what the interpreter lets
    through (non-power-of-two blocks, type mismatches in compiled control flow). ``signature`` maps the
    runtime arguments to Triton types; ``constexprs`` are added to it as such. Skips the calling test
    where kernels are interpreted in this process or this Triton cannot target a GPU it does not see."""
    import pytest

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    import triton
    from triton.compiler import ASTSource

    try:
        from triton.backends.compiler import GPUTarget
    except ImportError:  # pragma: no cover - older triton
        pytest.skip("this triton cannot compile for a target without a GPU")
    source = ASTSource(fn=kernel, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
                       constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
