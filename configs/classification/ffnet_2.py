# FFNet-2 ImageNet-1k recipe: as ffnet_1.py with drop path 0.15. Published: 82.9 top-1 (83.7 KD).
_base_ = ["ffnet_1.py"]
model = dict(network="ffnet_2", network_kwargs=dict(drop_path_rate=0.15))
