# Restore-RWKV's medical image pairs (datasets/restore_rwkv/, layout 'restore_rwkv'): PET synthesis, CT
# denoising and MRI x4 super-resolution slices. Batch 4 of random 128x128 crops, no flips; validation on
# 32 slices per modality, test on every slice; scored by MedicalRestorationMetric (PSNR/SSIM/RMSE as the
# Restore-RWKV medical protocol). Recipes set `modalities` in each dataloader's dataset.
data_root = "datasets/restore_rwkv/"
modalities = ["MRI"]

train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedSliceDataset", root=data_root, layout="restore_rwkv", split="train",
                 modalities=modalities, crop=128))
val_dataloader = dict(
    batch_size=1, num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedSliceDataset", root=data_root, layout="restore_rwkv", split="validation",
                 modalities=modalities, max_items=32))  # per modality
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader["dataset"], split="test", max_items=None))
val_evaluator = dict(type="MedicalRestorationMetric")
test_evaluator = val_evaluator
