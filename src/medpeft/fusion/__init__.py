"""Fusion: how the modalities of a sample meet in one model.

``single``: one image modality on the plain timm ViT (names unchanged).
``concat``: several image modalities as one token stream with modality embeddings.
``vilt``: image + text in one ViLT stream.
Each fusion model takes the batch dict and enters the call's routing
(:mod:`medpeft.routing`) around its forward.
"""
