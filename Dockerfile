# Tollgate: one image for every role (`tollgate proxy`, `ledger`,
# `analytics`, `serve`, …). Multi-stage: the build stage compiles the
# release binary (librdkafka is built in, statically); the runtime stage is
# Debian slim with the binary, CA certificates and curl (health checks),
# running as an unprivileged user.
#
#   docker build -t tollgate .
#   docker run --rm tollgate --help

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tollgate \
 && install -D -m 0755 target/release/tollgate /out/tollgate \
 && strip --strip-debug /out/tollgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid tollgate --home-dir /var/lib/tollgate \
      --shell /usr/sbin/nologin tollgate \
 && install -d -o tollgate -g tollgate -m 0750 /var/lib/tollgate
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# State (SQLite files, the Kafka spool, generated secrets) lives here; mount
# a volume on it.
WORKDIR /var/lib/tollgate
VOLUME ["/var/lib/tollgate"]
USER tollgate:tollgate
# gateway, admin API, ledger (credits API), analytics (usage API)
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["tollgate"]
CMD ["serve"]
