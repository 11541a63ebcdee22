# KITTI 3D object detection (datasets/kitti3d/: training/{velodyne,label_2,calib,image_2}, ImageSets/,
# gt_database/ + kitti_dbinfos_train.pkl from OpenPCDet; datasets/kitti3d/README.md). Augmentation:
# OpenPCDet's kitti_dataset.yaml: GT sampling (Car 20, Pedestrian 15, Cyclist 15), flip along x only
# (the range covers the front view), rotation +-pi/4, scaling [0.95, 1.05]. Points: camera field of view only.
# Another root: override train_dataloader.dataset.root, val_dataloader.dataset.root and the GT database's
# train_dataloader.dataset.pipeline.0.root with --cfg-options.
data_root = "datasets/kitti3d"
class_names = ("Car", "Pedestrian", "Cyclist")
point_cloud_range = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
gt_sampling = dict(
    type="GTSampling", root=data_root, db_info="kitti_dbinfos_train.pkl",
    sample_groups=dict(Car=20, Pedestrian=15, Cyclist=15), class_names=class_names, num_point_features=4,
    min_points=dict(Car=5, Pedestrian=5, Cyclist=5), filter_difficulty=(-1,))
train_pipeline = [
    gt_sampling,
    dict(type="RandomWorldFlip", axes=("x",)),
    dict(type="GlobalRotation", rot_range=(-0.78539816, 0.78539816)),
    dict(type="GlobalScaling", scale_range=(0.95, 1.05)),
    dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range),
    dict(type="BoxesRangeFilter", point_cloud_range=point_cloud_range),
    dict(type="PointShuffle"),
]
test_pipeline = [dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range)]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    # workers restart every epoch, so that GTSamplingOffHook's switch reaches them
    persistent_workers=False,
    collate_fn=dict(type="lidar_collate"),
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(type="KittiDetection3D", root=data_root, split="train", class_names=class_names,
                 point_cloud_range=point_cloud_range, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=4,
    collate_fn=dict(type="lidar_collate"),
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="KittiDetection3D", root=data_root, split="val", class_names=class_names,
                 point_cloud_range=point_cloud_range, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="KittiMetric3D")
test_evaluator = val_evaluator
