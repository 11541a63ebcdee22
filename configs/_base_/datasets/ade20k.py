# ADE20K (SceneParsing 150 classes) read from datasets/ade20k/{images,annotations}/{training,validation}
# (the unpacked ADEChallengeData2016 folder), mmseg's 512x512 pipeline: label 0 ("other") becomes 255 and is
# ignored (reduce_zero_label). Scored with visionattn's MeanIoU (mIoU, mAcc, aAcc).
_base_ = 'mmseg::_base_/datasets/ade20k.py'

data_root = 'datasets/ade20k'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='visionattn.MeanIoU', ignore_index=255)
test_evaluator = val_evaluator
