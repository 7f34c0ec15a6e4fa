"""Helpers the tests share, importable as ``tests.support`` (the root conftest puts the repository on
``sys.path``; conftests themselves are not importable under ``--import-mode=importlib``).

``clips``: tiny encoded clips and wavs; ``launch``: the launcher environment; ``batches``: hand-built model batches
for the tiny backbone; ``models``: model set-up; ``wheels``: tiny emotion-wheel tables; ``training``: the loop
tests' config and run helpers; ``evaluation``: the tiny evaluation config and a checkpoint as training writes it.
Test shards live in the package (``affectverse_ds.tools.fixture_shards``): bench/ writes them too, and benchmarks
do not import tests (nor tests bench/; tests/foundation/test_bench_test_arrows.py checks both).
"""
