# RestoreFormer++ stage 1: the reconstruction-oriented HQ dictionary (ROHQD), configs/ROHQD.yaml of
# wzhouxiff/RestoreFormerPlusPlus. The restoreformer_rohqd autoencoder (4 heads, decoder self-attention at
# 16x16, trainable 1024 x 256 codebook) reconstructs augmented FFHQ faces; L1 + LPIPS + codebook loss + PatchGAN
# from iteration 30,001 (adaptive weight x 0.8); Adam (0.5, 0.9), lr 4.5e-6 x batch; 400k iterations (ours: the
# official config sets no length). Differences: see RestoreFormerGAN's docstring (discriminator scores the
# generator step's reconstruction). Stage 2 (restoreformerpp_stage2.py) starts from this run's last checkpoint.
_base_ = ["../_base_/datasets/ffhq_dictionary.py", "../_base_/models/restoreformer_gan.py",
          "../_base_/schedules/restoreformer_400k.py", "../_base_/runtime/default.py"]
custom_imports = dict(imports=["visionattn.datasets.faces", "visionattn.datasets.face_degradations",
                               "visionattn.engine.restoration_model", "visionattn.engine.restoreformer_model",
                               "visionattn.evaluation.restoration_metrics"], allow_failed_imports=False)

model = dict(network="restoreformer_rohqd", disc_start=30001)

default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(by_epoch=False, interval=_base_.val_interval, max_keep_ckpts=3, save_best="psnr", rule="greater"))
log_processor = dict(by_epoch=False)
