"""TaskModel: one way to build the network, one data_samples convention, several optimisers."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MessageHub

from visionattn.engine import DataSamples, ImageClassifier, TaskModel, build_network
from visionattn.engine.restoration_model import ImageRestorer
from visionattn.engine.task_model import MultiOptimWrapperConstructor, network_spec


# --- the network --------------------------------------------------------------------------------

def test_both_config_forms_build_the_same_network():
    assert network_spec("test_vit", dict(img_size=32)) == ("test_vit", dict(img_size=32))
    assert network_spec(dict(name="test_vit", img_size=32)) == ("test_vit", dict(img_size=32))
    assert network_spec(dict(name="test_vit"), dict(img_size=32)) == ("test_vit", dict(img_size=32))
    a = ImageClassifier("test_vit", num_classes=4, network_kwargs=dict(img_size=32))
    b = ImageClassifier(dict(name="test_vit", img_size=32), num_classes=4)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.network.num_classes == b.network.num_classes == 4


def test_network_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"\['img_size'\] given both"):
        network_spec(dict(name="test_vit", img_size=32), dict(img_size=64))
    with pytest.raises(ValueError, match="needs name="):
        network_spec(dict(img_size=32))
    with pytest.raises(ValueError, match="model name, dict"):
        network_spec(3)
    with pytest.raises(ValueError, match=r"\['num_classes'\] of network 'test_vit' are set by the task model"):
        ImageClassifier("test_vit", num_classes=4, network_kwargs=dict(num_classes=5))
    with pytest.raises(ValueError, match="already built Conv2d"):
        build_network(nn.Conv2d(1, 1, 1), dict(bias=False))


def test_built_module_loads_a_checkpoint(tmp_path):
    src = nn.Conv2d(1, 2, 3)
    torch.save({"state_dict": {f"network.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    net = build_network(nn.Conv2d(1, 2, 3), checkpoint=str(tmp_path / "w.pth"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), src.state_dict().values()))


def test_restorer_loads_checkpoints_that_named_its_network_net():
    m = ImageRestorer(nn.Conv2d(1, 1, 3, padding=1))
    old = {k.replace("network.", "net.", 1): v + 1 for k, v in m.state_dict().items()}
    fresh = ImageRestorer(nn.Conv2d(1, 1, 3, padding=1))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.network.weight, old["net.weight"])


# --- data_samples ---------------------------------------------------------------------------------

def test_data_samples_read_the_same_batched_or_listed():
    gt = torch.rand(3, 1, 4, 4)
    listed = DataSamples([dict(gt=g, label=i, name=f"s{i}") for i, g in enumerate(gt)], 3)
    batched = DataSamples(dict(gt=gt, label=torch.arange(3), name=["s0", "s1", "s2"]), 3)
    for s in (listed, batched):
        assert len(s) == 3 and s.fields() == ["gt", "label", "name"] and "gt" in s and "x" not in s
        assert torch.equal(s.stack("gt"), gt) and s.stack("label").tolist() == [0, 1, 2]
        assert [r["name"] for r in s] == ["s0", "s1", "s2"] and torch.equal(s[1]["gt"], gt[1])
        assert s.stack("x", required=False) is None
        with pytest.raises(ValueError, match="no 'x' field"):
            s.stack("x")
    assert batched.stack("gt") is gt  # batched fields are not copied
    assert list(DataSamples(None, 2)) == [{}, {}]
    with pytest.raises(ValueError, match="only some samples"):
        DataSamples([dict(a=1), dict()], 2).stack("a")
    with pytest.raises(ValueError, match="3 values per field"):
        DataSamples(dict(gt=gt[:2]), 3)
    with pytest.raises(ValueError, match="2 data_samples for a batch of 3"):
        DataSamples([{}, {}], 3)


def test_modes_are_dispatched_once_for_every_task_model():
    m = ImageRestorer(nn.Conv2d(1, 1, 3, padding=1))
    x = torch.rand(2, 1, 8, 8)
    assert m(x).shape == x.shape  # 'tensor' is the default mode
    with pytest.raises(ValueError, match="mode must be 'loss', 'predict' or 'tensor', got 'bogus'"):
        m(x, mode="bogus")
    assert [set(p) for p in m(x, None, mode="predict")] == [{"pred"}, {"pred"}]


# --- several optimisers -----------------------------------------------------------------------------

class ToyGAN(TaskModel):
    """A generator (the network) against a discriminator; its adversarial term reaches D's parameters."""

    optimizers = dict(generator="network", discriminator="discriminator")

    def __init__(self, **kwargs):
        torch.manual_seed(0)
        super().__init__(nn.Linear(4, 4), **kwargs)
        self.discriminator = nn.Linear(4, 1)

    def step_losses(self, name, inputs, samples, shared):
        gt = samples.stack("gt")
        if name == "generator":
            shared["fake"] = fake = self.network(inputs)
            return dict(loss_g_pixel=F.l1_loss(fake, gt), loss_g_adv=F.softplus(-self.discriminator(fake)).mean())
        fake = shared["fake"] if "fake" in shared else self.network(inputs)
        return dict(loss_d_real=F.softplus(-self.discriminator(gt)).mean(),
                    loss_d_fake=F.softplus(self.discriminator(fake.detach())).mean())

    def predict(self, inputs, samples):
        return [dict(pred=o) for o in self.network(inputs)]


class ToyPairs(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=dict(gt=self.y[i]))


OPTIM = dict(constructor="MultiOptimWrapperConstructor",
             generator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=1e-2)),
             discriminator=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=1e-1)))


@pytest.mark.parametrize("device,wrapper", [("cpu", "OptimWrapper"),
                                            pytest.param("cuda", "AmpOptimWrapper", marks=pytest.mark.cuda)])
def test_each_optimiser_steps_on_its_schedule_and_only_its_parameters(device, wrapper):
    MessageHub.get_instance(f"test_task_model_schedule_{device}")  # a fresh hub: no runner iteration, the model counts
    model = ToyGAN(step_schedule=dict(discriminator=dict(every=2, start=3))).to(device)
    cfg = {k: dict(v, type=wrapper) for k, v in OPTIM.items() if k != "constructor"}
    wrappers = MultiOptimWrapperConstructor(cfg)(model)
    assert list(wrappers.keys()) == ["generator", "discriminator"]
    data = ToyPairs(2)
    batch = dict(inputs=data.x, data_samples=[dict(gt=y) for y in data.y])
    stepped = []
    for it in range(8):
        g0, d0 = model.network.weight.clone(), model.discriminator.weight.clone()
        logs = model.train_step(batch, wrappers)
        g_moved, d_moved = not torch.equal(g0, model.network.weight), not torch.equal(d0, model.discriminator.weight)
        stepped.append((g_moved, d_moved))
        assert ("loss_discriminator" in logs) == d_moved and ("loss_generator" in logs) == g_moved
        # the generator's adversarial loss went through D, yet left no gradient on D's parameters
        assert all(p.grad is None for p in model.discriminator.parameters())
        assert all(p.requires_grad for p in model.parameters())
    assert stepped == [(True, it in (3, 5, 7)) for it in range(8)]
    assert set(logs) == {"loss_g_pixel", "loss_g_adv", "loss_generator", "loss_d_real", "loss_d_fake",
                         "loss_discriminator"}


def test_schedule_and_optimiser_errors():
    with pytest.raises(ValueError, match=r"step_schedule names \['critic'\]"):
        ToyGAN(step_schedule=dict(critic=dict(every=2)))
    with pytest.raises(ValueError, match="every=int >= 1"):
        ToyGAN(step_schedule=dict(discriminator=dict(every=0)))
    with pytest.raises(ValueError, match="do not match the optimisers"):
        MultiOptimWrapperConstructor(dict(generator=OPTIM["generator"]))(ToyGAN())
    gan_wrappers = MultiOptimWrapperConstructor({k: v for k, v in OPTIM.items() if k != "constructor"})(ToyGAN())
    restorer = ImageRestorer(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="trains with one optimiser"):
        restorer.train_step(dict(inputs=torch.rand(1, 1, 2, 2), data_samples=[dict(gt=torch.rand(1, 2, 2))]),
                            gan_wrappers)


def _gan_runner(work_dir, max_iters, resume_from=None):
    from mmengine.runner import Runner

    return Runner(
        model=ToyGAN(step_schedule=dict(discriminator=dict(every=2, start=1))), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyPairs(), batch_size=2, num_workers=0, collate_fn=dict(type="default_collate"),
                              sampler=dict(type="DefaultSampler", shuffle=False)),
        optim_wrapper=OPTIM, train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3),
                           logger=dict(type="LoggerHook", interval=1)),
        default_scope="visionattn", resume=resume_from is not None, load_from=resume_from,
        experiment_name=str(work_dir).replace("/", "_"))  # own logger and MessageHub per runner


def test_runner_trains_both_optimisers_and_resumes_exactly(tmp_path):
    straight = _gan_runner(tmp_path / "straight", 6)
    start = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.train()
    final = straight.model.state_dict()
    assert all(not torch.equal(start[k], final[k]) for k in start)  # both networks trained
    ckpt = torch.load(tmp_path / "straight" / "iter_3.pth", weights_only=False)
    assert set(ckpt["optimizer"]) == {"generator", "discriminator"}
    # resumed after iteration 3: the schedule continues (D at 5, as in the straight run, not at the
    # resumed run's second step) and both optimisers' states (Adam's moments) are restored
    resumed = _gan_runner(tmp_path / "resumed", 6, resume_from=str(tmp_path / "straight" / "iter_3.pth"))
    resumed.train()
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=0)
