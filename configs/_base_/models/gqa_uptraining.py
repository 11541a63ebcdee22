# Up-training a timm ViT into a GQA variant: the network's pretrained weights are timm's
# vit_*_patch16_224 (fused qkv), converted on load (K/V heads mean-pooled into groups, queries
# copied, the classifier re-initialised for num_classes). Plain cross-entropy, no mixup.
# Recipes set model.network, model.num_classes and the attention options in network_kwargs.
model = dict(
    type="ImageClassifier",
    network="vit_base_patch16_224_gqa",
    num_classes=100,
    pretrained=True,
    network_kwargs=dict(),
    data_preprocessor=dict(type="ClassificationDataPreprocessor", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
)
