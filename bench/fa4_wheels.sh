#!/bin/bash
# FlashAttention-4 (CuTe DSL) for bench/moa_gpu.py on the lent GPU machine, which has no network and
# takes at most 64 MiB per call: the wheels are downloaded here and carried over two calls.
#
#   bash bench/fa4_wheels.sh prepare            # here: download cp312 wheels, split into .fa1/ and .fa2/
#   device call 1 (carry .fa1):  mkdir -p /tmp/fa && cp .fa1/* /tmp/fa/
#   device call 2 (carry .fa2):  bash bench/fa4_wheels.sh unpack && \
#       PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/site:. python3 bench/moa_gpu.py ...
#
# unpack extracts the wheels instead of `pip install --target`: the CuTe DSL wheels share one package
# folder (nvidia_cutlass_dsl/dsl_packages/cutlass), which pip --target skips once it exists, and
# the .pth file that puts dsl_packages on sys.path is not read from a PYTHONPATH folder.
set -euo pipefail
LIBS=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
case "${1:-}" in
prepare)
  d=$(mktemp -d)
  pip download -q --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 -d "$d" \
    flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 "apache-tvm-ffi<0.2,>=0.1.11" \
    torch-c-dlpack-ext quack-kernels==0.6.5 einops "cuda-bindings>=13,<14" cuda-pathfinder protobuf \
    nvidia-cudnn-frontend==1.14.0
  rm -rf .fa1 .fa2 && mkdir -p .fa1 .fa2
  split -b 50000000 "$d/$LIBS" .fa1/cu13part_
  mv .fa1/cu13part_ab .fa2/
  mv "$d"/cuda_bindings-*.whl .fa1/
  mv "$d"/*.whl .fa2/ && rm -f ".fa2/$LIBS"
  du -sh .fa1 .fa2
  ;;
unpack)
  cat /tmp/fa/cu13part_aa .fa2/cu13part_ab > "/tmp/fa/$LIBS"
  mkdir -p /tmp/site
  for w in "/tmp/fa/$LIBS" /tmp/fa/cuda_bindings-*.whl .fa2/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
  PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/site python3 -c \
    "import flash_attn.cute.interface, cudnn; print('flash-attn-4 and cudnn frontend import; cuDNN', cudnn.backend_version())"
  ;;
*) echo "usage: bash bench/fa4_wheels.sh prepare|unpack" >&2; exit 2 ;;
esac
