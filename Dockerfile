# HECKTOR 2025 algorithm image (Tasks 1-3). Build with ./build.sh [1|2|3|all].
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# Which task(s) this image serves: the platform needs one algorithm per task and the inputs of
# Tasks 1 and 3 are identical, so the task is baked in at build time (see docs in README).
ARG TASKS=all

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd -r user && useradd -m --no-log-init -r -g user user

WORKDIR /opt/app

COPY requirements.txt /opt/app/
# Same requirements as a local run; on the GPU image the CUDA build of onnxruntime replaces the CPU one.
RUN python -m pip install -r requirements.txt \
 && python -m pip uninstall -y onnxruntime \
 && python -m pip install onnxruntime-gpu==1.32.0

COPY hecktor/ /opt/app/hecktor/
COPY model_weights/ /opt/app/model_weights/
COPY resources/ /opt/app/resources/
COPY inference.py /opt/app/

RUN printf '#!/bin/sh\nexec python /opt/app/inference.py --tasks %s "$@"\n' "${TASKS}" > /opt/app/entrypoint.sh \
 && chmod 0755 /opt/app/entrypoint.sh \
 && python -c "import hecktor.pipeline"

USER user
ENTRYPOINT ["/opt/app/entrypoint.sh"]
