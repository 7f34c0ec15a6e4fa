"""Helpers the tests share, importable as ``tests.support`` (the root conftest puts the repository on
``sys.path``; conftests themselves are not importable under ``--import-mode=importlib``).

``shards``: valid test shards and single samples in the shard contract; ``clips``: tiny encoded clips and wavs;
``launch``: the launcher environment; ``batches``: hand-built model batches for the tiny backbone.
"""
