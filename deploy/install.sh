#!/usr/bin/env sh
# Install Easel into a virtual environment and fetch its model weights. The Dockerfile runs
# this at build time; the systemd route runs it by hand. Settings (environment variables):
#   EASEL_VENV       where the virtual environment goes           (default /opt/easel/venv)
#   EASEL_CACHE_DIR  where the converted weights go                (default /opt/easel/cache)
#   EASEL_SOURCE     what to install: a checkout or a wheel        (default: this checkout)
#   TORCH_SPEC       the torch pins (CPU and CUDA builds both work) (default: the tested versions)
#   PYTHON           the interpreter to build the venv from         (default python3)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${EASEL_VENV:-/opt/easel/venv}
export EASEL_CACHE_DIR=${EASEL_CACHE_DIR:-/opt/easel/cache}
source=${EASEL_SOURCE:-$(dirname "$here")}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check $torch_spec
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check "$source"
"$venv/bin/easel" weights fetch
"$venv/bin/easel" weights
