#!/usr/bin/env bash
# The README's main job in an existing environment: synthetic ISIC data -> prepare -> train -> validation Dice.
set -euo pipefail
exec python -m vmunet_monai demo "$@"
