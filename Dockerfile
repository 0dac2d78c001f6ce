# The console, the Celery worker and the inference sidecar of docker-compose.yml.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY . .
# PyTorch's CPU build (model export at deployment; sentence-transformers runs the original model
# for the parity gate of an added model), then the project with its pins.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
      torch==2.13.0 \
 && pip install --no-cache-dir '.[export,reference,compose]' \
 && python manage.py collectstatic --noinput
