# voice-bridge on the embedded Piper voice (CPU). Builds the same install as README's first command:
# a virtualenv in the checkout with `pip install -e .` (no torch: GPU engines are an optional extra),
# so presets.yaml is found beside the packages exactly as in a checkout.
FROM python:3.11-slim

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
    && /app/.venv/bin/pip install -e .

RUN useradd --create-home --uid 10001 bridge
USER bridge
EXPOSE 8080

# TWILIO_AUTH_TOKEN and PUBLIC_URL must be provided at run time (docker run -e ...).
CMD ["voice-bridge", "serve", "--host", "0.0.0.0", "--port", "8080"]
