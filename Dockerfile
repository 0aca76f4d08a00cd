# syntax=docker/dockerfile:1
# The busbench image, for load hosts that run containers (see examples/kubernetes/):
#
#   docker build -t busbench --build-arg BUSBENCH_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm --network host busbench run /opt/busbench/scenarios/medium.toml
#
# Two stages: the Rust toolchain builds the release binary (librdkafka is compiled from source
# by the rdkafka crate, which needs the C toolchain, make and zlib of the build image); the
# runtime stage is Debian slim with the binary, the bundled scenarios and an unprivileged user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The commit the reports name (the build context has no .git).
ARG BUSBENCH_GIT_COMMIT=unknown
ENV BUSBENCH_GIT_COMMIT=${BUSBENCH_GIT_COMMIT}
COPY . .
RUN cargo build --release --locked --bin busbench \
    && strip target/release/busbench

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /work --create-home busbench
COPY --from=build /src/target/release/busbench /usr/local/bin/busbench
COPY scenarios /opt/busbench/scenarios
USER busbench
WORKDIR /work
ENTRYPOINT ["busbench"]
CMD ["--help"]
