# The key-driven GQA paper's up-training data pipeline, shared by the CIFAR-10/100, Food-101 and
# Tiny-ImageNet bases: train RandAugment -> resize 224 x 224; eval resize 224 x 224 (normalisation
# mean = std = 0.5 in the model's data preprocessor). Batch 32. Each dataset base sets type/root/split.
input_size = 224

train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(split="train",
                 transform=dict(type="UptrainingTransform", train=True, input_size=input_size)),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(split="test",
                 transform=dict(type="UptrainingTransform", train=False, input_size=input_size)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="Accuracy", topk=(1, 5))
test_evaluator = val_evaluator
