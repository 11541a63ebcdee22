from visionattn.datasets.sample_writers import SAMPLE_WRITERS


def test_make_samples_only_imagenet(load_tool, tmp_path, capsys):
    written = load_tool("make_samples").main(["--root", str(tmp_path), "--only", "imagenet"])
    assert set(written) == {"imagenet"} and "imagenet" in SAMPLE_WRITERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]
    assert len(list((tmp_path / "imagenet").rglob("*.JPEG"))) == 400
    out = capsys.readouterr().out
    assert "imagenet" in out and "400 files" in out and str(tmp_path / "imagenet") in out
