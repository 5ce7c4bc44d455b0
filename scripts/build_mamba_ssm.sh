#!/usr/bin/env bash
# Build and install mamba-ssm's CUDA selective scan for this machine's GPU architecture only.
# The script ships inside the package (vmunet_monai/resources/build_mamba_ssm.sh, where `python -m
# vmunet_monai doctor` points an installed copy to); this is its place in a checkout. Usage and
# environment variables: see that file.
here=.
[[ $0 == */* ]] && here=${0%/*}
exec "$BASH" "$here/../vmunet_monai/resources/build_mamba_ssm.sh" "$@"
