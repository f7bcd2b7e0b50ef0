# rua-sink: the MX for DMARC and SMTP TLS reports.
# Build stage: the wheel only. Final stage: a slim Python with that wheel, no compilers
# (lxml and asyncpg install from manylinux wheels), running as an unprivileged user on a
# read-only root filesystem (TMPDIR must be a writable volume, for large message spools).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2.post1
COPY pyproject.toml README.md ./
COPY rua_sink ./rua_sink
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin rua-sink
COPY --from=build /dist/ /dist/
RUN pip install --no-cache-dir /dist/rua_sink-*.whl && rm -r /dist
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    RUA_SINK_SMTP_LISTEN=0.0.0.0:2525 \
    RUA_SINK_HTTP_LISTEN=0.0.0.0:9102
USER 10001:10001
EXPOSE 2525 9102
ENTRYPOINT ["rua-sink"]
CMD ["serve"]
