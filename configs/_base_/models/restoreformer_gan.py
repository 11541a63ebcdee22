# The RestoreFormer GAN training model shared by both stages (RestoreFormer/models/vqgan_v1.py and
# modules/losses/vqperceptual.py of the official repository): L1 + LPIPS-VGG (weight 1) + codebook loss (weight 1)
# + PatchGAN (3 layers, 64 channels, BatchNorm, hinge loss) with the adaptive weight x 0.8. Adam (0.5, 0.9) for the
# generator and the discriminator at lr = 4.5e-6 x total batch (official base_learning_rate, scaled by
# GPUs x batch x accumulation; 4.5e-6 x 4 here: one GPU, batch 4). The LPIPS trunk loads torchvision's
# vgg16-397923af.pth from vgg16_path (None: the torch-hub cache path); nothing is downloaded.
base_lr = 4.5e-6 * 4
vgg16_path = None

model = dict(
    type="RestoreFormerGAN",
    perceptual=dict(type="LPIPSLoss", vgg_path=vgg16_path), perceptual_weight=1.0,
    pixel_weight=1.0, codebook_weight=1.0,
    discriminator=dict(width=64, num_layers=3), gan_loss="HingeGANLoss", disc_weight=0.8)

optim_wrapper = dict(
    constructor="MultiOptimWrapperConstructor",
    generator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=base_lr, betas=(0.5, 0.9))),
    discriminator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=base_lr, betas=(0.5, 0.9))))
# `tools/train.py --auto-scale-lr` rescales both lrs to the actual total batch (the official linear rule).
auto_scale_lr = dict(enable=False, base_batch_size=4)
