import pytest
import timm


def test_demo_picks_the_smallest_runnable_backbone(load_tool):
    demo = load_tool("demo")
    sizes = demo.backbones_by_size(8)
    assert sizes == sorted(sizes)
    name, kwargs = demo.pick_model(8, 64)
    assert demo.demo_kwargs(name, 8, 64) == kwargs
    # the first (smallest) backbone that runs at 64 px, else the timm fallback
    expected = next((n for _, n in sizes if demo.demo_kwargs(n, 8, 64) is not None), demo.FALLBACK)
    assert name == expected and timm.is_model(name)


@pytest.mark.slow
def test_demo_learns(load_tool, samples_root, tmp_path):
    """What `make demo` does (a few minutes on CPU)."""
    result = load_tool("demo").main(["--work-dir", str(tmp_path)])
    assert result["after"] >= 50 and result["after"] > result["before"]
