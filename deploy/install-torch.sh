#!/bin/sh
# Install PyTorch into the Python environment of $1, before stream-vae, so that `torch>=2.4` is
# already met and pip does not resolve it to the multi-GB CUDA build of the default index.
#
#   TORCH_SPEC   what to install (default torch==2.13.0)
#   TORCH_INDEX  where from (default PyTorch's CPU wheel index, https://download.pytorch.org/whl/cpu;
#                a CUDA index such as .../whl/cu126 for a GPU machine; empty: pip's own index)
#
# Where TORCH_INDEX cannot serve it (no network to it, an offline mirror, a platform it has no
# wheel for), this says so and installs TORCH_SPEC from pip's configured index instead.
set -eu
py=${1:?usage: install-torch.sh PYTHON}
spec=${TORCH_SPEC:-torch==2.13.0}
index=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
reachable() {  # the index answers within 10 s (pip would retry an unreachable one for minutes)
    "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
        "$1" >/dev/null 2>&1
}
if [ -n "$index" ]; then
    if ! reachable "$index"; then
        echo "install-torch: $index is not reachable; using pip's configured index" >&2
    elif "$py" -m pip install -q --index-url "$index" "$spec"; then
        echo "install-torch: $spec from $index"
        exit 0
    else
        echo "install-torch: $index could not serve $spec; using pip's configured index" >&2
    fi
fi
"$py" -m pip install -q "$spec"
echo "install-torch: $spec from pip's configured index"
