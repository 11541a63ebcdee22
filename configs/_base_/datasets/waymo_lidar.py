# Waymo Open Dataset as OpenPCDet processes it (datasets/waymo/: ImageSets/, waymo_processed_data_v0_5_0/ and
# its GT database; layout in datasets/waymo/README.md). Augmentation: OpenPCDet's waymo_dataset.yaml as the
# ScatterFormer config uses it: GT sampling (Vehicle 15, Pedestrian 10, Cyclist 10), flips along x and y,
# rotation +-pi/4, scaling [0.95, 1.05], translation std 0.5 m; empty boxes dropped for training.
# Another root: override train_dataloader.dataset.root, val_dataloader.dataset.root and the GT database's
# train_dataloader.dataset.pipeline.0.root with --cfg-options.
data_root = "datasets/waymo"
class_names = ("Vehicle", "Pedestrian", "Cyclist")
point_cloud_range = (-76.8, -76.8, -2.0, 76.8, 76.8, 4.0)
gt_sampling = dict(
    type="GTSampling", root=data_root, db_info="waymo_processed_data_v0_5_0_waymo_dbinfos_train_sampled_1.pkl",
    sample_groups=dict(Vehicle=15, Pedestrian=10, Cyclist=10), class_names=class_names, num_point_features=5,
    min_points=dict(Vehicle=5, Pedestrian=5, Cyclist=5), filter_difficulty=(-1,), waymo_levels=True)
train_pipeline = [
    gt_sampling,
    dict(type="RandomWorldFlip", axes=("x", "y")),
    dict(type="GlobalRotation", rot_range=(-0.78539816, 0.78539816)),
    dict(type="GlobalScaling", scale_range=(0.95, 1.05)),
    dict(type="GlobalTranslation", std=(0.5, 0.5, 0.5)),
    dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range),
    dict(type="BoxesRangeFilter", point_cloud_range=point_cloud_range, min_num_points=1),
    dict(type="PointShuffle"),
]
test_pipeline = [dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range)]
train_dataloader = dict(
    batch_size=4,
    num_workers=8,  # a 160k-point frame takes ~0.1-0.2 s of one core to read and augment
    # workers restart every epoch, so that GTSamplingOffHook's switch reaches them
    persistent_workers=False,
    collate_fn=dict(type="lidar_collate"),
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(type="WaymoDetection3D", root=data_root, split="train", class_names=class_names,
                 point_cloud_range=point_cloud_range, sampled_interval=1, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=4,
    collate_fn=dict(type="lidar_collate"),
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="WaymoDetection3D", root=data_root, split="val", class_names=class_names,
                 point_cloud_range=point_cloud_range, sampled_interval=1, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="WaymoStyleMetric")
test_evaluator = val_evaluator
