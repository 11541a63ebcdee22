# MatchStereo-B trained from scratch on SceneFlow (320x736 crops). Losses: visionattn.engine.losses.MatchStereoLoss.
# Same recipe as the MatchStereo-T one; only the network differs.
_base_ = ["matchstereo_t_sceneflow.py"]
model = dict(network="matchstereo_base")
