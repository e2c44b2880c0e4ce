# Sesame: one image for every component; the command picks which one runs.
#   docker run IMAGE up          everything under one supervisor (embedded stores)
#   docker run IMAGE api|smtp|mx|worker|scheduler   one component (deploy/compose.yaml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so volumes and Kubernetes' runAsUser agree on the owner.
RUN groupadd --system --gid 10001 sesame \
    && useradd --system --uid 10001 --gid sesame --home-dir /var/lib/sesame \
       --create-home --shell /usr/sbin/nologin sesame

WORKDIR /opt/sesame
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p sesame api mta workers quota \
    && touch sesame/__init__.py \
    && pip install . \
    && pip uninstall -y sesame
# Editable: migrations/ is found beside the packages (sesame/db.py).
COPY sesame ./sesame
COPY api ./api
COPY mta ./mta
COPY workers ./workers
COPY quota ./quota
COPY migrations ./migrations
RUN pip install --no-deps -e . && python -m compileall -q sesame api mta workers quota

USER sesame
ENV SESAME_DATA_DIR=/var/lib/sesame \
    SESAME_API_HOST=0.0.0.0 \
    SESAME_SMTP_HOST=0.0.0.0 \
    SESAME_MX_HOST=0.0.0.0 \
    SESAME_METRICS_HOST=0.0.0.0 \
    SESAME_METRICS_PORT=9464
VOLUME ["/var/lib/sesame"]
# API, submission (STARTTLS, implicit TLS), inbound MX, metrics of lone components.
EXPOSE 8080 2587 2465 2525 9464

ENTRYPOINT ["sesame"]
CMD ["up"]
