"""The evaluate entry point by path, for a clone: `affectverse_ds/launch/evaluate.py` holds it (usage there)."""
import sys

from affectverse_ds.launch.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
