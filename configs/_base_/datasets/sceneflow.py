# SceneFlow (FlyingThings3D + Driving + Monkaa, clean pass) stereo training; datasets/sceneflow/.
data_root = "datasets/sceneflow"
crop_size = (320, 736)
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    collate_fn=dict(type="default_collate"),
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="SceneFlowDataset", root=data_root, split="TRAIN",
                 transform=dict(type="StereoAugment", crop_size=crop_size, scale_range=(0.8, 1.2),
                                color_jitter=0.3, asymmetric_prob=0.2, occlusion_prob=0.5)),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    collate_fn=dict(type="default_collate"),
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="SceneFlowDataset", root=data_root, subsets=("FlyingThings3D",), split="TEST"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="StereoMetric")
test_evaluator = val_evaluator
