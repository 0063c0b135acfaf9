# HECKTOR 2025 algorithm image: ONE task per image, in one of two flavours. Build it with ./build.sh TASK
# (README, "Containers"); by hand:
#   docker build --build-arg TASK=1 [--build-arg FLAVOUR=torch] [--build-arg MODEL_WEIGHTS=DIR] -t NAME .
#
# FLAVOUR=onnxruntime (default, for submission): ONNX Runtime with its CUDA provider, no torch; the ensemble
#   members must be .onnx files (python -m hecktor export-onnx).
# FLAVOUR=torch: torch (CUDA build) and safetensors members.
# Both flavours' CUDA libraries come from NVIDIA's PyPI wheels (onnxruntime: CUDA 12, driver >= 525; torch:
# CUDA 13, driver >= 580), so the base is plain Debian.

FROM --platform=linux/amd64 debian:bookworm-slim AS python

# Empty by default. Where HTTPS goes through a proxy with its own CA (this project's development machines),
# pass the CA file as a build volume and its path here (build.sh --host-ca FILE does both); pip then uses it.
ARG PIP_CERT=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Python 3.11 from Debian; everything else comes from PyPI into /opt/venv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && python3 -m venv /opt/venv


# The package as a wheel, built in its own stage so neither its source nor setuptools' build folders reach the
# image (only the wheel crosses over).
FROM python AS wheel
# Build arguments do not cross stages: each stage that runs pip declares it again.
ARG PIP_CERT=
COPY pyproject.toml /src/
COPY hecktor/ /src/hecktor/
RUN /opt/venv/bin/pip wheel ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps --wheel-dir /wheel /src


# The runtime pins that PyPI publishes as source only (requirements/sdists.txt: pyradiomics-bhklab, with C
# extensions, and docopt) as wheels, built in their own stage so that the compiler, Python's headers and the build
# tools never reach the image: only the wheels (about 200 kB) cross over. No build isolation: the build uses exactly
# requirements/sdists-build.txt, whose numpy is the runtime pin, so the extensions are compiled against the numpy
# they run with, on the image's own Debian Python 3.11.
FROM python AS sdists
ARG PIP_CERT=
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libpython3.11-dev \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log
COPY requirements/sdists.txt requirements/sdists-build.txt /src/requirements/
RUN /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --only-binary=:all: -r /src/requirements/sdists-build.txt \
 && /opt/venv/bin/pip wheel ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps --no-build-isolation --use-pep517 --no-binary=:all: \
      --wheel-dir /sdist-wheels -r /src/requirements/sdists.txt


# The model folder, readable by any user (the platform picks the user), whatever the build context's modes.
FROM python AS weights
# The model folder (manifest.json, members, Task 2/3 models), relative to the build context.
ARG MODEL_WEIGHTS=model_weights
COPY ${MODEL_WEIGHTS}/ /weights/
RUN chmod -R u=rwX,go=rX /weights


FROM python AS image
ARG PIP_CERT=

# onnxruntime or torch: which requirements/<FLAVOUR>.txt is installed.
ARG FLAVOUR=onnxruntime

# HOME on /tmp: the platform runs the image as a non-root user with a read-only root filesystem and only /tmp
# and /output writable, so any library's ~/.cache must land on the scratch mount. CUDA's JIT (PTX) kernel
# cache would go to $HOME/.nv; it is put on /tmp explicitly. The NVIDIA container toolkit mounts the driver's
# compute libraries only for the capabilities named here. The CUDA and cuDNN libraries of NVIDIA's wheels
# are not on the loader's default path: onnxruntime's preload_dlls() and torch find them by themselves, and
# LD_LIBRARY_PATH makes the CUDA provider load even without that. It names both layouts: the CUDA 12 wheels
# (onnxruntime flavour) keep one folder per library, the CUDA 13 wheels (torch flavour) share nvidia/cu13/lib;
# cuDNN is in nvidia/cudnn/lib in both. Folders a flavour lacks are skipped by the loader.
ARG NV=/opt/venv/lib/python3.11/site-packages/nvidia
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=$NV/cuda_runtime/lib:$NV/cublas/lib:$NV/cudnn/lib:$NV/cufft/lib:$NV/curand/lib:$NV/cuda_nvrtc/lib:$NV/cu13/lib

RUN case "$FLAVOUR" in onnxruntime|torch) ;; \
      *) echo "FLAVOUR must be onnxruntime or torch, got '$FLAVOUR'" >&2; exit 1;; esac

# Copied, not bind-mounted: Podman keys its layer cache on copied files only, so a bind-mounted requirement
# file that changed would be installed from a stale cached layer. Binary wheels only: a pin without a Linux wheel
# fails here instead of needing a compiler in the image; the source-only pins come as the wheels of the sdists
# stage (--find-links), which are deleted after (they cross over by COPY, like the package's wheel below).
COPY requirements/core.txt requirements/sdists.txt requirements/${FLAVOUR}.txt /opt/hecktor/requirements/
COPY --from=sdists /sdist-wheels/ /opt/hecktor/sdist-wheels/
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} --only-binary=:all: --find-links /opt/hecktor/sdist-wheels \
      -r "/opt/hecktor/requirements/$FLAVOUR.txt" \
 && pip check \
 && rm -rf /opt/hecktor/sdist-wheels

RUN groupadd --system --gid 10001 hecktor \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin hecktor

# Models are read from this folder only (the entry point passes --weights-dir: the package default points next
# to the package source, which after `pip install` is inside site-packages). Made world-readable in the
# weights stage, because a chmod here would copy every model file into a second layer.
COPY --from=weights /weights/ /opt/hecktor/model_weights/

# The wheel crosses over by COPY and is deleted after (about 100 kB stay in that layer): Podman 4.3's
# RUN --mount from another stage fails once that stage comes from the build cache.
COPY --from=wheel /wheel/ /opt/hecktor/wheel/
RUN pip install --no-deps --no-index /opt/hecktor/wheel/hecktor-*.whl \
 && rm -rf /opt/hecktor/wheel

# Smoke checks: the package imports; the onnxruntime flavour has NO torch, is a CUDA 12 build, offers the CUDA
# provider, and every CUDA library and symbol that provider links against is found (`ldd -r`: a missing or
# too-old library fails here, not as a silent CPU fallback on the platform; libcuda.so.1 comes from the driver at
# run time and is the one library allowed to be missing); the torch flavour has a CUDA build of torch; the model
# folder passes the manifest schema and matches the flavour.
RUN python -c "import hecktor.apps.cli, hecktor.apps.contract, radiomics.glcm, radiomics.shape, radiomics.firstorder" \
 && if [ "$FLAVOUR" = onnxruntime ]; then \
      if python -c "import torch" 2>/dev/null; then echo "torch must not be in the onnxruntime image" >&2; exit 1; fi; \
      python -c "import onnxruntime as ort, sys; from onnxruntime.capi.build_and_package_info import cuda_version; \
p = ort.get_available_providers(); print('onnxruntime', ort.__version__, 'CUDA', cuda_version, p); \
sys.exit('CUDAExecutionProvider' not in p or not cuda_version.startswith('12.'))"; \
      capi=/opt/venv/lib/python3.11/site-packages/onnxruntime/capi; \
      missing="$(for lib in "$capi/libonnxruntime_providers_cuda.so" "$NV"/cudnn/lib/libcudnn*.so.9; do \
                   ldd -r "$lib" 2>&1 | grep -E 'not found|undefined symbol: cu' | grep -v 'libcuda\.so\.1' | sed "s|^|$lib: |"; \
                 done)"; \
      if [ -n "$missing" ]; then echo "CUDA libraries missing:" >&2; echo "$missing" >&2; exit 1; fi; \
    else \
      python -c "import torch, safetensors, sys; print('torch', torch.__version__, 'CUDA', torch.version.cuda); sys.exit(torch.version.cuda is None)"; \
    fi \
 && python -c "import sys; from pathlib import Path; from hecktor.core.manifest import load_manifest; \
m = load_manifest(Path('/opt/hecktor/model_weights')); \
backend = m.ensemble.backend if m.engine == 'ensemble' else None; print('models:', m.engine, backend or ''); \
sys.exit(backend not in (None, '$FLAVOUR') and 'manifest backend %s needs the %s flavour' % (backend, backend))"

# The task is baked into the entry point: the platform needs one algorithm per task, and Tasks 1 and 3 have
# identical inputs, so the image cannot tell from its inputs which it is serving. Declared last so that images
# of the three tasks share every layer above.
ARG TASK
ARG MODEL_WEIGHTS=model_weights
RUN case "$TASK" in 1|2|3) ;; *) echo "TASK must be 1, 2 or 3 (--build-arg TASK=N), got '$TASK'" >&2; exit 1;; esac \
 && printf '#!/bin/sh\n# HECKTOR 2025 Task %s (flavour %s): one case from /input to /output.\nexec /opt/venv/bin/hecktor-inference --tasks %s --weights-dir /opt/hecktor/model_weights "$@"\n' \
      "$TASK" "$FLAVOUR" "$TASK" > /opt/hecktor/entrypoint \
 && chmod 0555 /opt/hecktor/entrypoint
LABEL org.opencontainers.image.title="HECKTOR 2025 Task ${TASK} (${FLAVOUR})" \
      hecktor.task="${TASK}" \
      hecktor.flavour="${FLAVOUR}" \
      hecktor.model-weights="${MODEL_WEIGHTS}"

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/opt/hecktor/entrypoint"]
