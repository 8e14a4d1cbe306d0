"""Adapter files: medpeft's adapter folders (current and 0.1 layouts), LoRA-ViT/MeLo
import, Hugging Face PEFT export, and merged (the backbone library's format) / ONNX export.

Sits above :mod:`medpeft.model` (it builds models to load into) and below the run
folders, the adapter bank and the server.
"""
