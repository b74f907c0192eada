# Strata broker image: build with the Rust toolchain, run on a slim Debian.
#   docker build -t strata .
#   docker run strata serve --help
# Both stages are Debian bookworm, so the binary's glibc matches at run time.
FROM rust:1-bookworm AS build
# aws-lc-sys (TLS for the S3 client) builds C code; cmake covers its fallback build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && install -m 0755 target/release/strata /usr/local/bin/strata

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/strata --create-home strata
COPY --from=build /usr/local/bin/strata /usr/local/bin/strata
USER strata
WORKDIR /var/lib/strata
VOLUME ["/var/lib/strata"]
# 9092: Kafka clients; 9093: metadata Raft between brokers.
EXPOSE 9092 9093
ENTRYPOINT ["strata"]
CMD ["serve", "--listen", "0.0.0.0:9092", "--advertise", "localhost:9092", "--data-dir", "/var/lib/strata"]
