# RestoreFormer++ stage 2 data: FFHQ 512x512 aligned faces (datasets/ffhq/) degraded on the fly by the extending
# degradation model (configs/RestoreFormerPlusPlus.yaml; visionattn/datasets/face_degradations.py says each
# step), with the eye/mouth boxes of FFHQ_eye_mouth_landmarks_512.pth for the component discriminators.
# Batch 4. Validation and test: CelebA-Test pairs (datasets/celeba_test/{lq,gt}) by PSNR/SSIM (8-bit RGB, no
# crop, as RestoreFormer's cal_psnr_ssim.py); the test evaluator adds LPIPS, identity distance and FID
# (their weight files are named in the recipe).
ffhq_root = "datasets/ffhq/images512x512"
landmarks = "datasets/ffhq/FFHQ_eye_mouth_landmarks_512.pth"
celeba_test_root = "datasets/celeba_test"

degradation = dict(type="UnevenMix", prob=0.1, patch_fraction=(0.25, 0.5), degradation=[
    dict(type="RandomGaussianBlur", kernel_size=(39, 41), kernel_types=["iso", "aniso"], kernel_probs=[0.5, 0.5],
         sigma=(0.1, 10.0)),
    dict(type="Haze", prob=0.008, alpha=(0.75, 0.95)),
    dict(type="RandomDownsample", scale=(0.8, 8.0), inner=[
        dict(type="GaussianNoise", sigma=(0.0, 20.0)),
        dict(type="JPEGCompression", quality=(60.0, 100.0)),
    ]),
])
train_pipeline = [
    dict(type="FaceFlip", prob=0.5),
    dict(type="RandomShift", prob=0.2, max_shift=32),
    dict(type="MakeLQ", degradation=degradation),
    dict(type="RandomGrayscale", prob=0.008, gt_too=True),
    dict(type="Quantize", keys=["lq"]),
]
train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="FFHQFaces", root=ffhq_root, size=512, components=landmarks, eye_enlarge=1.4,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedFaces", root=celeba_test_root, lq_dir="lq", gt_dir="gt", max_items=100))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader["dataset"], max_items=None))
val_evaluator = dict(type="BasicSRMetric", crop_border=0, y_channel=False)
test_evaluator = val_evaluator
