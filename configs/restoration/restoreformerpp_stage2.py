# RestoreFormer++ stage 2: restoration, configs/RestoreFormerPlusPlus.yaml of wzhouxiff/RestoreFormerPlusPlus.
# restoreformerpp (4 heads, MHCA at 16x16 and 32x32) initialised from the stage-1 dictionary (`dictionary`: the
# stage-1 work dir, whose last checkpoint is read, or a checkpoint file; the 32x32 MHCA blocks start fresh),
# codebook frozen, LQ from the extending degradation model. Losses as stage 1 (adversarial from iteration 10,001)
# plus, after it, eye/mouth component discriminators (weight 1.0, vanilla GAN, Adam (0.9, 0.99) at 10x lr) and the
# ArcFace identity loss (weight 1.0, arcface_resnet18.pth from arcface_path). The decoder's attention parameters
# train at 10x lr. 400k iterations (ours). Differences: see RestoreFormerGAN's docstring.
_base_ = ["../_base_/datasets/ffhq_restoreformerpp.py", "../_base_/models/restoreformer_gan.py",
          "../_base_/schedules/restoreformer_400k.py", "../_base_/runtime/default.py"]
custom_imports = dict(imports=["visionattn.datasets.faces", "visionattn.datasets.face_degradations",
                               "visionattn.engine.restoration_model", "visionattn.engine.restoreformer_model",
                               "visionattn.evaluation.restoration_metrics", "visionattn.evaluation.face_metrics"],
                      allow_failed_imports=False)

dictionary = "work_dirs/restoreformerpp_stage1"
arcface_path = "datasets/pretrained/arcface_resnet18.pth"
fid_stats = "datasets/pretrained/inception_FFHQ_512-f7b384ab.pth"
fid_inception = None  # pt_inception-2015-12-05-6726825d.pth; None: the torch-hub cache path

model = dict(
    network="restoreformerpp", dictionary=dictionary, disc_start=10001,
    components=dict(width=64, weight=1.0, gan_loss="VanillaGANLoss", eye_size=80, mouth_size=120, design_size=512),
    identity=dict(type="IdentityLoss", arcface_path=arcface_path), identity_weight=1.0)

component_optim = dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=_base_.base_lr * 10, betas=(0.9, 0.99)))
optim_wrapper = dict(
    generator=dict(constructor="RegexParamwiseConstructor",
                   paramwise_cfg=dict(patterns={r"^decoder\..*attn": dict(lr_mult=10.0)})),
    left_eye=component_optim, right_eye=component_optim, mouth=component_optim)

test_evaluator = [
    dict(type="BasicSRMetric", crop_border=0, y_channel=False),
    dict(type="LPIPSMetric", vgg_path=_base_.vgg16_path),
    dict(type="IdentityDistanceMetric", arcface_path=arcface_path, channel_order="bgr"),
    dict(type="FIDMetric", stats_path=fid_stats, inception_path=fid_inception),
]

default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(by_epoch=False, interval=_base_.val_interval, max_keep_ckpts=3, save_best="psnr", rule="greater"))
log_processor = dict(by_epoch=False)
