# Build stage: the release binary, with dependencies cached in their own layer.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The workspace's other member, the tests' fake Kubernetes API server, is not built here;
# cargo needs its manifest and a target to read the workspace.
COPY crates/fake-k8s/Cargo.toml crates/fake-k8s/
RUN mkdir -p src crates/fake-k8s/src && touch crates/fake-k8s/src/lib.rs \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime stage: a small Debian with git (the local backend's clone step) and CA certificates,
# running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/piculet --create-home piculet
COPY --from=build /src/target/release/piculet /usr/local/bin/piculet
USER 10001:10001
WORKDIR /var/lib/piculet
ENV PICULET_DATA_DIR=/var/lib/piculet \
    PICULET_LISTEN=0.0.0.0:8080 \
    PICULET_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/piculet"]
CMD ["serve"]
