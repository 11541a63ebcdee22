# MatchStereo-T trained from scratch on SceneFlow (320x736 crops). Losses: visionattn.engine.losses.MatchStereoLoss.
_base_ = ["../_base_/datasets/sceneflow.py", "../_base_/schedules/stereo_adamw.py", "../_base_/runtime/default.py"]
model = dict(type="StereoMatcher", network="matchstereo_tiny", network_kwargs=dict(drop_path_rate=0.0),
             loss=dict(gamma=0.9, seq_weight=1.0, cv_weight=0.1, occ_weight=0.2))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000))
log_processor = dict(by_epoch=False)
