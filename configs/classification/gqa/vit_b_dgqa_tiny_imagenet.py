# ViT-B/16 up-trained from timm's MHA weights into DGQA (EMA of the key-head norms, re-allocated every 300 steps), 6 KV heads,
# on Tiny-ImageNet: the key-driven GQA paper's recipe (AdamW 1e-5, 5 epochs, batch 32, RandAugment, 224).
# Add faithful=True to network_kwargs to reproduce the official code's behaviour exactly.
_base_ = ["../../_base_/datasets/tiny_imagenet.py", "../../_base_/models/gqa_uptraining.py",
          "../../_base_/schedules/uptraining_5e.py", "../../_base_/runtime/default.py"]

model = dict(network="vit_base_patch16_224_dgqa", num_classes=200, network_kwargs=dict(num_kv_heads=6, dgqa_mode="ema", window=300))
randomness = dict(seed=42, deterministic=False)  # the official seed
