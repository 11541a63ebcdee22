import pytest
import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from visionattn.engine import MODELS, ClassificationDataPreprocessor, ImageClassifier


def _batch(n=4, size=32, classes=4):
    g = torch.Generator().manual_seed(0)
    return dict(inputs=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                data_samples=dict(label=torch.arange(n) % classes))


def test_build_from_config_and_modes():
    model = MODELS.build(dict(type="ImageClassifier", network="test_resnet", num_classes=4))
    assert isinstance(model.criterion, nn.CrossEntropyLoss)
    data = model.data_preprocessor(_batch(), training=False)
    assert data["inputs"].dtype == torch.float32
    logits = model(**data, mode="tensor")
    assert logits.shape == (4, 4)
    preds = model(**data, mode="predict")
    assert len(preds) == 4 and [p["gt_label"] for p in preds] == [0, 1, 2, 3]
    assert torch.allclose(preds[0]["pred_score"].sum(), torch.tensor(1.0))
    assert preds[0]["pred_label"] == int(logits[0].argmax())
    with pytest.raises(ValueError, match="mode"):
        model(**data, mode="bogus")


@pytest.mark.parametrize("batch", [4, 3])  # mixup pairs a batch with its reverse; odd batches are not mixed
def test_mixup_loss_and_backward(batch):
    model = ImageClassifier("test_resnet", num_classes=4, label_smoothing=0.1,
                            mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))
    assert isinstance(model.criterion, SoftTargetCrossEntropy)
    data = model.data_preprocessor(_batch(batch), training=True)
    loss = model(**data, mode="loss")["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.network.parameters() if p.requires_grad)


def test_label_smoothing_without_mixup():
    model = ImageClassifier("test_resnet", num_classes=4, label_smoothing=0.1)
    assert isinstance(model.criterion, LabelSmoothingCrossEntropy)
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier("test_resnet", num_classes=0)


def test_init_weights_keeps_the_networks_weights():
    # mmengine calls init_weights when training starts; it must not re-initialise (pretrained) weights
    model = ImageClassifier("test_vit", num_classes=4, network_kwargs=dict(img_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_preprocessor_normalises_and_erases_only_in_training():
    pre = ClassificationDataPreprocessor(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                         random_erasing=dict(probability=1.0, mode="const"))
    batch = dict(inputs=torch.full((2, 3, 16, 16), 191, dtype=torch.uint8), data_samples=dict(label=torch.tensor([0, 1])))
    out = pre(dict(batch), training=False)["inputs"]
    assert torch.allclose(out, torch.full_like(out, (191 / 255 - 0.5) / 0.25))
    erased = pre(dict(batch), training=True)["inputs"]
    assert (erased == 0).any() and (erased != 0).any()  # 'const' erasing writes zeros into part of each image
    from_model = ClassificationDataPreprocessor(model_name="resnet10t")
    assert torch.allclose(from_model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)


def _graph_steps(device, steps=3, amp=False):
    """Losses and parameter gradients of ImageClassifier with and without cuda_graph, same weights."""
    torch.manual_seed(0)
    models = [ImageClassifier("test_resnet", num_classes=4, cuda_graph=g).to(device) for g in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]
    out = []
    for step in range(steps):
        data = models[0].data_preprocessor(_batch(4, 32), training=True)
        rows = []
        for m, opt in zip(models, opts):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                loss = m(data["inputs"].to(device), {"label": data["data_samples"]["label"].to(device)},
                         mode="loss")["loss"]
            loss.backward()
            rows.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
            opt.step()
        out.append(rows)
    return models, out


def test_cuda_graph_option_runs_eagerly_on_cpu():
    models, steps = _graph_steps("cpu", steps=2)
    assert len(models[1].train_graph) == 0
    for (loss0, g0), (loss1, g1) in steps:
        assert torch.equal(loss0, loss1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert "train_graph" not in str(list(models[1].state_dict()))  # the graph holds no parameters of its own


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [False, True])  # bf16 autocast with its cache on, as mmengine's AmpOptimWrapper
def test_cuda_graph_training_equals_eager(amp):
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    models, steps = _graph_steps("cuda", amp=amp)
    assert len(models[1].train_graph) == 1
    for (loss0, g0), (loss1, g1) in steps:
        torch.testing.assert_close(loss1, loss0)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(b, a)
