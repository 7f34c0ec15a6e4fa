"""The entry points as package modules, so an installed package (``pip install .``, no clone) can run them:

    deepspeed --module affectverse_ds.launch.train --ds ... --config ...
    torchrun --nproc_per_node N -m affectverse_ds.launch.evaluate --checkpoint ... --config ...

``launch/train.py`` and ``launch/evaluate.py`` in a clone are the same entry points by path.
"""
