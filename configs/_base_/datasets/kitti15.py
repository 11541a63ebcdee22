# KITTI 2015 stereo fine-tuning (training split, 200 pairs); datasets/kitti2015/.
data_root = "datasets/kitti2015"
crop_size = (320, 1024)
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    collate_fn=dict(type="default_collate"),
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="KITTIStereoDataset", root=data_root, version=2015,
                 transform=dict(type="StereoAugment", crop_size=crop_size, scale_range=(0.9, 1.1),
                                color_jitter=0.2, asymmetric_prob=0.2, occlusion_prob=0.3)),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    collate_fn=dict(type="default_collate"),
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="KITTIStereoDataset", root=data_root, version=2015),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="StereoMetric")
test_evaluator = val_evaluator
