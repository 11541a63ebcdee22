# RestoreFormer++ stage 1 (the HQ dictionary, ROHQD) data: FFHQ 512x512 aligned faces (datasets/ffhq/, an
# image folder or a BasicSR LMDB), autoencoded: no LQ, the input is the clean face after the official
# augmentations (configs/ROHQD.yaml: horizontal flip, shift p 0.2 by up to 32 px, grey p 0.008). Batch 4.
# Validation reconstructs the CelebA-Test GT faces (datasets/celeba_test/gt), scored by PSNR/SSIM.
ffhq_root = "datasets/ffhq/images512x512"
celeba_test_root = "datasets/celeba_test"

train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="FFHQFaces", root=ffhq_root, size=512, pipeline=[
        dict(type="FaceFlip", prob=0.5),
        dict(type="RandomShift", prob=0.2, max_shift=32),
        dict(type="RandomGrayscale", prob=0.008, gt_too=True),
    ]))
val_dataloader = dict(
    batch_size=1, num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedFaces", root=celeba_test_root, lq_dir="gt", gt_dir="gt", max_items=100))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader["dataset"], max_items=None))
val_evaluator = dict(type="BasicSRMetric", crop_border=0, y_channel=False)
test_evaluator = val_evaluator
