"""The train entry point by path, for a clone: `affectverse_ds/launch/train.py` holds it (usage there)."""
import sys

from affectverse_ds.launch.train import main

if __name__ == "__main__":
    sys.exit(main())
