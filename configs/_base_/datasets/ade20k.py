# ADE20K (SceneParsing 150 classes) read from datasets/ade20k/{images,annotations}/{training,validation}
# (the unpacked ADEChallengeData2016 folder), mmseg's 512x512 pipeline: label 0 ("other") becomes 255 and is
# ignored (reduce_zero_label). Scored with mmseg's IoUMetric (mIoU; aAcc, mAcc and the per-class IoU/Acc table
# in the log); for a test-server submission set test_evaluator = dict(type='IoUMetric', format_only=True,
# output_dir='work_dirs/ade20k_test_png'). mmseg's multi-scale + flip test (tta_model, tta_pipeline) comes
# with the base: tools/test.py --tta.
_base_ = 'mmseg::_base_/datasets/ade20k.py'

data_root = 'datasets/ade20k'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
