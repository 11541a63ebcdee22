# ViT-B/16 up-trained from timm's MHA weights into uniform GQA, 6 KV heads,
# on CIFAR-100: the key-driven GQA paper's recipe (AdamW 1e-5, 5 epochs, batch 32, RandAugment, 224).
# Add faithful=True to network_kwargs to reproduce the official code's behaviour exactly.
_base_ = ["../../_base_/datasets/cifar100.py", "../../_base_/models/gqa_uptraining.py",
          "../../_base_/schedules/uptraining_5e.py", "../../_base_/runtime/default.py"]

model = dict(network="vit_base_patch16_224_gqa", num_classes=100, network_kwargs=dict(num_kv_heads=6))
randomness = dict(seed=42, deterministic=False)  # the official seed
