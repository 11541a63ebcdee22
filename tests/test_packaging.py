"""Packaging: setup.cfg declares what the package imports (and nothing it never imports), optional
formats go through their extras, and a wheel built from this checkout installs as a working library
(configs and zoo manifest inside, console scripts that run from any directory)."""
import ast
import configparser
import functools
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "visionattn"

# imported but deliberately not declared: triton ships with torch's Linux wheels and is optional
# (visionattn.ops falls back to the reference without it)
UNDECLARED_OK = {"triton"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements():
    """{'core': {dist, ...}, '<extra>': {...}} from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(text):
        return {_normalise(re.split(r"[<>=!~;\[ ]", line.strip())[0]) for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")}

    out = {"core": names(cfg["options"]["install_requires"])}
    out.update({extra: names(text) for extra, text in cfg["options.extras_require"].items()})
    return out


def _third_party_imports():
    """Top-level module name -> files of visionattn/ importing it (at any depth, absolute imports)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                mods = [node.args[0].value]  # require_extra("nibabel") imports nibabel
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top != "visionattn" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@functools.lru_cache(maxsize=None)
def _installed():
    return packages_distributions()


def _dists(module: str):
    return {_normalise(d) for d in _installed().get(module, [module])}


def test_every_import_is_declared():
    reqs = _requirements()
    declared = set().union(*reqs.values())
    undeclared = {m: sorted(files)[:3] for m, files in _third_party_imports().items()
                  if m not in UNDECLARED_OK and not _dists(m) & declared}
    assert not undeclared, f"imported by visionattn/ but in no requirement of setup.cfg: {undeclared}"


def test_every_core_requirement_is_imported():
    imported = set()
    for module in _third_party_imports():
        imported |= _dists(module)
    unused = sorted(reqs for reqs in _requirements()["core"] if reqs not in imported)
    assert not unused, f"setup.cfg's install_requires lists packages visionattn never imports: {unused}"


def test_extras_are_imported_only_through_require_extra():
    """Modules of an extra are never imported plainly: require_extra names the extra when one is missing."""
    from visionattn.extras import _EXTRAS

    reqs = _requirements()
    optional = {m for m in _EXTRAS} | {m for m in _third_party_imports() if not _dists(m) & reqs["core"]}
    bad = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and getattr(node.func, "id", None) == "require_extra" and node.args
                   and isinstance(node.args[0], ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {m}" for m in mods
                    if m in optional and m not in guarded and m not in UNDECLARED_OK]
    assert not bad, "\n".join(bad)


def test_medical_extra_is_named_when_missing(tmp_path):
    code = ("import sys\n"
            "for m in ('nibabel', 'pydicom', 'tifffile'): sys.modules[m] = None\n"
            "import visionattn\n"
            "from visionattn.datasets import medical_io\n"
            "try:\n"
            f"    medical_io.read_nifti({str(tmp_path / 'x.nii')!r})\n"
            "except ImportError as err:\n"
            "    print(err)\n")
    (tmp_path / "x.nii").write_bytes(b"")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install 'visionattn[medical]'" in out.stdout and "NIfTI" in out.stdout


def _console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def test_console_scripts_and_tools_run_the_same_programs():
    import importlib

    scripts = _console_scripts()
    assert {"visionattn-train", "visionattn-test", "visionattn-zoo", "visionattn-benchmark"} <= set(scripts)
    assert {"visionattn-infer-stereo", "visionattn-infer-restore"} <= set(scripts)
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        entry = getattr(importlib.import_module(module), function)
        name = entry.__name__
        assert importlib.util.find_spec(f"visionattn.cli.{name}") is not None, script
        wrapper = REPO / "tools" / f"{name}.py"
        assert wrapper.is_file() and f'run("{name}")' in wrapper.read_text(), f"{wrapper} does not wrap {script}"


def test_a_tool_wrapper_runs_from_another_directory(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), VISIONATTN_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, str(REPO / "tools" / "zoo.py"), "list", "biformer_*"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "biformer_small.in1k" in out.stdout and "biformer_small " in out.stdout


def _source_copy(dst: Path) -> Path:
    """The files of this checkout that git would commit (tracked or not ignored), copied to ``dst``."""
    import shutil

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
        files = [f for f in listed if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but build output
        skip = {".venv", ".git", "build", "dist", "work_dirs", "datasets", ".wheels", "__pycache__"}
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    return dst


def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    """pip wheel (offline) -> a fresh venv that reuses this environment's dependencies -> the
    console script runs outside the checkout, with the configs and the zoo manifest of the wheel."""
    import sysconfig

    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels),
                                  str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel, = wheels.glob("visionattn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "visionattn/.mim/model_zoo/biformer.yaml" in names and "visionattn/.mim/configs/biformer_s.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "configs/", "model_zoo/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies: this environment's site-packages, after the venv's own (a path line, so the
    # .pth files there, such as an editable visionattn, are not run)
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_deps_of_the_test_environment.pth").write_text("\n".join(sorted(here)) + "\n")
    install = subprocess.run(pip + ["--python", str(python), "install", "--no-index", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VISIONATTN_ZOO_DIR")}
    env.update(VISIONATTN_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    out = subprocess.run([str(venv / "bin" / "visionattn-zoo"), "list", "ffnet_1*"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ffnet_1.in1k_ema" in out.stdout
    check = ("import visionattn, visionattn.hub as hub, visionattn.resources as r; from mmengine.config import Config; "
             "print(visionattn.__file__); print(hub.zoo_dir()); print(Config.fromfile(str(r.find_config("
             "'configs/biformer_s.py'))).model.network)")
    out = subprocess.run([str(python), "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    package, zoo, network = out.stdout.split()[-3:]
    assert package.startswith(site) and zoo == str(Path(site) / "visionattn" / ".mim" / "model_zoo")
    assert network == "biformer_small"
