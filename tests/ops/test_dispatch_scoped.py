"""use_impl("op:impl"): forcing one op inside a model while the others keep auto-selection."""
from visionattn.ops.dispatch import pick, use_impl

BOTH = {"triton": True, "reference": True}


def test_scoped_force_applies_to_the_named_ops_only():
    with use_impl("layer_norm:reference"):
        assert pick("layer_norm", "auto", BOTH) == "reference"
        assert pick("bilevel_routing_attention", "auto", BOTH) == "triton"
    with use_impl("layer_norm:reference+key_norm_allocation:reference"):
        assert pick("key_norm_allocation", "auto", BOTH) == "reference"
        assert pick("layer_norm", "auto", BOTH) == "reference"
        assert pick("wkv", "auto", BOTH) == "triton"
    with use_impl("reference"):  # unscoped: every op
        assert pick("wkv", "auto", BOTH) == "reference"
    assert pick("layer_norm", "auto", BOTH) == "triton"


def test_benchmark_accepts_scoped_impls():
    from visionattn.cli.benchmark import _scoped_impl_known

    assert _scoped_impl_known("layer_norm:reference")
    assert _scoped_impl_known("layer_norm:triton+key_norm_allocation:reference")
    assert not _scoped_impl_known("layer_norm:fast") and not _scoped_impl_known("no_such_op:reference")
    assert not _scoped_impl_known("reference")
