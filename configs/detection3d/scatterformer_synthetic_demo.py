# ScatterFormer (KITTI configuration on a 25.6 x 25.6 m front range, 128 x 128 voxels, 64 x 64 BEV) trained
# on the CPU on the procedural KITTI-layout samples (python tools/make_samples.py --only kitti3d): a
# pipeline demonstration, not a model to use. Validation on the held-out ImageSets/val.txt frames.
_base_ = ["scatterformer_kitti.py"]
data_root = "datasets/samples/kitti3d"
class_names = ("Car", "Pedestrian", "Cyclist")
point_cloud_range = (0.0, -12.8, -3.0, 25.6, 12.8, 1.0)
max_epochs = 240  # 16 training frames, 8 a batch: 480 iterations
train_pipeline = [
    dict(type="GTSampling", root=data_root, db_info="kitti_dbinfos_train.pkl",
         sample_groups=dict(Car=6, Pedestrian=4, Cyclist=4), class_names=class_names, num_point_features=4,
         min_points=dict(Car=5, Pedestrian=5, Cyclist=5), filter_difficulty=(-1,)),
    dict(type="RandomWorldFlip", axes=("x",)),
    dict(type="GlobalRotation", rot_range=(-0.78539816, 0.78539816)),
    dict(type="GlobalScaling", scale_range=(0.95, 1.05)),
    dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range),
    dict(type="BoxesRangeFilter", point_cloud_range=point_cloud_range, min_num_points=1),
    dict(type="PointShuffle"),
]
test_pipeline = [dict(type="PointsRangeFilter", point_cloud_range=point_cloud_range)]
train_dataloader = dict(
    batch_size=8, num_workers=0,
    dataset=dict(root=data_root, point_cloud_range=point_cloud_range, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(root=data_root, point_cloud_range=point_cloud_range, pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(network=dict(name="scatterformer_kitti", point_cloud_range=point_cloud_range))
param_scheduler = [
    dict(type="OneCycleLR", eta_max=0.003, pct_start=0.1, div_factor=10, final_div_factor=100,
         anneal_strategy="cos", by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=80)
default_hooks = dict(checkpoint=dict(interval=40, max_keep_ckpts=1), logger=dict(interval=2))
custom_hooks = [dict(type="GTSamplingOffHook", last_epochs=20)]
