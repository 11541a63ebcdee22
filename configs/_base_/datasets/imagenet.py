# ImageNet-1k in its folder layout (datasets/imagenet/{train,val}/<wnid>/*.JPEG, see
# datasets/imagenet/README.md), with the DeiT train/eval transforms. Per-GPU batch 128
# (DeiT: 8 GPUs x 128 = 1024).
data_root = "datasets/imagenet"
input_size = 224

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=False,  # workers re-seeded per epoch: exact --resume
    drop_last=True,  # mixup pairs each image with another: even batches
    # DeiT's repeated augmentation (3 differently augmented copies per image, on different GPUs)
    sampler=dict(type="RepeatAugSampler", num_repeats=3),
    collate_fn=dict(type="default_collate"),
    dataset=dict(
        type="ImageNetFolder",
        root=data_root,
        split="train",
        transform=dict(type="ClassificationTransform", train=True, input_size=input_size,
                       auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic"),
    ),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(
        type="ImageNetFolder",
        root=data_root,
        split="val",
        transform=dict(type="ClassificationTransform", train=False, input_size=input_size,
                       interpolation="bicubic", crop_pct=0.875),
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="Accuracy", topk=(1, 5))
test_evaluator = val_evaluator
