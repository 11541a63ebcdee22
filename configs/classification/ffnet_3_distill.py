# FFNet-3 with DeiT hard distillation (one head): loss = 0.5 CE + 0.5 CE(teacher arg-max), teacher
# RegNetY-160 with DeiT's weights (timm regnety_160.deit_in1k), drop path 0.2; otherwise as
# ffnet_3.py. Published: 84.5 top-1.
_base_ = ["ffnet_3.py"]
custom_imports = dict(imports=["visionattn.engine.distillation"], allow_failed_imports=False)
model = dict(type="DistilledImageClassifier", network_kwargs=dict(drop_path_rate=0.2),
             teacher="regnety_160.deit_in1k", teacher_pretrained=True, distillation_type="hard", alpha=0.5)
