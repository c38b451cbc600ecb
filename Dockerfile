# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with the toolchain, run it from a slim image as a non-root user.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/calbroker \
 && /opt/calbroker/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/calbroker/bin/pip install --no-cache-dir .

FROM python:3.12-slim AS runtime
ENV PATH=/opt/calbroker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALBROKER_HOST=0.0.0.0 \
    CALBROKER_PORT=8080 \
    CALBROKER_DATA_DIR=/var/lib/calbroker
RUN groupadd --system calbroker \
 && useradd --system --gid calbroker --home-dir /var/lib/calbroker --create-home calbroker
COPY --from=build /opt/calbroker /opt/calbroker
USER calbroker
WORKDIR /var/lib/calbroker
EXPOSE 8080
# Probes the port the API was configured with (CALBROKER_PORT), whatever it is.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["calbroker", "healthcheck", "--timeout", "3"]
ENTRYPOINT ["calbroker"]
CMD ["serve"]
