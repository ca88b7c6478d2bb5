# pgtide in a container: a static-ish release build on Debian, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# libclang: the SQL parser's bindings are generated at build time.
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY crates crates
COPY sql sql
COPY tests tests
RUN cargo build --release -p pgtide --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 pgtide
COPY --from=build /src/target/release/pgtide /usr/local/bin/pgtide
COPY mappings /etc/pgtide/mappings
USER pgtide
ENV PGTIDE_LISTEN=0.0.0.0:8080 \
    PGTIDE_MAPPINGS=/etc/pgtide/mappings
EXPOSE 8080
ENTRYPOINT ["pgtide"]
CMD ["run"]
