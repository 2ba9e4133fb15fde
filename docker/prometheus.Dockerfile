# Prometheus for the compose stack's `observability` profile, on the same base as the Funnel image (Debian's
# prometheus package), configured by deploy/prometheus/compose.yml to scrape every replica.
#   docker build -f docker/prometheus.Dockerfile -t funnel-prometheus .     (make images builds it)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
COPY docker/certs/ /usr/local/share/ca-certificates/funnel/
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    update-ca-certificates; \
    apt-get install -y --no-install-recommends prometheus; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o prometheus -g prometheus /prometheus
COPY deploy/prometheus/compose.yml /etc/prometheus/prometheus.yml
USER prometheus
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=5s CMD ["promtool", "check", "healthy", "--url=http://127.0.0.1:9090"]
ENTRYPOINT ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
            "--web.listen-address=0.0.0.0:9090"]
