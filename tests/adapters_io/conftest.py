"""The tiny ViT fixtures of the method tests, for the adapter-file tests."""

from tests.methods.conftest import backbone_file, images, randomize_lora, tiny_spec, tiny_vit  # noqa: F401
