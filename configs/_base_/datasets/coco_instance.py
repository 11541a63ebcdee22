# COCO 2017 instance segmentation (boxes + masks) read from datasets/coco/ (mmdet's pipeline).
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

data_root = 'datasets/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
