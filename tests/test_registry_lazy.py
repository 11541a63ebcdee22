"""Modules needing an optional extra are registered lazily: listed without importing, built on demand."""
import sys
import textwrap

import pytest

import visionattn
from visionattn import registry


@pytest.fixture
def lazy_family(tmp_path, monkeypatch):
    """A package with one module that needs 'spconv' and registers a network and an mm model."""
    pkg = tmp_path / "lazyfam"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(textwrap.dedent("""
        from visionattn.extras import require_extra
        spconv = require_extra("spconv")
        import torch.nn as nn
        from visionattn.registry import MODELS, register_network

        @register_network("lazy_testnet", family="lazytest", task="detection3d")
        def lazy_testnet(**kwargs):
            return nn.Identity()

        @MODELS.register_module()
        class LazyTestModel(nn.Identity):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.lazy("lazyfam.net", extra="spconv", networks=["lazy_testnet"], models=["LazyTestModel"])
    yield "lazyfam.net"
    registry.LAZY_MODULES.pop("lazyfam.net")
    for key in [k for k, v in registry._LAZY_NAMES.items() if v == "lazyfam.net"]:
        del registry._LAZY_NAMES[key]
    dict.pop(registry.NETWORKS, "lazy_testnet", None)
    registry.MODELS._module_dict.pop("LazyTestModel", None)
    for name in ("lazyfam", "lazyfam.net"):
        sys.modules.pop(name, None)


def test_lazy_names_are_listed_without_importing(lazy_family):
    assert "lazy_testnet" in visionattn.list_models()
    assert "lazy_testnet" in registry.NETWORKS
    registry.import_submodules("lazyfam")  # skips the lazy module
    assert lazy_family not in sys.modules


def test_building_without_the_extra_names_the_extra(lazy_family, monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[3d\]'"):
        visionattn.create_model("lazy_testnet")
    with pytest.raises(ImportError, match="3d"):
        registry.MODELS.build(dict(type="LazyTestModel"))


def test_building_with_the_extra_imports_the_module(lazy_family, monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", type(sys)("spconv"))  # a stand-in that imports
    model = visionattn.create_model("lazy_testnet")
    assert type(model).__name__ == "Identity" and lazy_family in sys.modules
    assert registry.MODELS.build(dict(type="LazyTestModel")).__class__.__name__ == "LazyTestModel"
