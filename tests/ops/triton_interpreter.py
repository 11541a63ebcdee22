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
