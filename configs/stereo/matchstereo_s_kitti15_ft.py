# MatchStereo-S fine-tuned on KITTI 2015 from the official FSD-Mix weights (model zoo).
# Same recipe as the MatchStereo-T one; only the network differs.
_base_ = ["matchstereo_t_kitti15_ft.py"]
model = dict(network="matchstereo_small")
