# voice-bridge. Two variants, chosen with a build argument:
#
#   docker build -t voice-bridge .                                   # VARIANT=cpu (default)
#   docker build -t voice-bridge:cuda --build-arg VARIANT=cuda .     # + PyTorch 2.6 cu124 + Chatterbox
#
# cpu: the embedded Piper voice. Builds the same install as README's first command: a virtualenv in
# the checkout with `pip install -e .` (no torch: GPU engines are an optional extra), so presets.yaml
# is found beside the packages exactly as in a checkout.
# cuda: README's "Chatterbox" install: torch==2.6.0 + torchaudio==2.6.0 from PyTorch's cu124 index
# first, then `pip install -e '.[chatterbox]'`. The cu124 wheels carry the CUDA 12.4 runtime and
# cuDNN as pip packages, so the base image stays python:3.11-slim (an nvidia/cuda base would add a
# second copy of the same libraries, and Ubuntu 22.04 has no stable Python 3.11); the host needs an
# NVIDIA driver >= 550 and the NVIDIA Container Toolkit (`docker run --gpus all`). No weights are in
# the image: mount the checkpoint directory (README) and set VOICE_BRIDGE_ENGINE=chatterbox.
# A build argument (not a second stage) so that building the CPU image never builds the CUDA one,
# whichever Docker builder is used.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md presets.yaml ./
COPY tts_core ./tts_core
COPY telephony ./telephony

RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install --upgrade pip \
    && case "$VARIANT" in \
         cpu)  /app/.venv/bin/pip install -e . ;; \
         cuda) /app/.venv/bin/pip install torch==2.6.0 torchaudio==2.6.0 --index-url "$TORCH_INDEX_URL" \
               && /app/.venv/bin/pip install -e '.[chatterbox]' ;; \
         *)    echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
       esac

RUN useradd --create-home --uid 10001 bridge
USER bridge
EXPOSE 8080

# TWILIO_AUTH_TOKEN and PUBLIC_URL must be provided at run time (docker run -e ...).
CMD ["voice-bridge", "serve", "--host", "0.0.0.0", "--port", "8080"]
