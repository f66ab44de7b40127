# eventscope container image: `docker build -t eventscope .`
# Build stage: the release binary (profile `image`: whole-program optimised) without the `demo` feature (no librdkafka, no OpenSSL: TLS is rustls),
# so the binary needs only glibc. Final stage: distroless, non-root (uid 65532), no shell.
# The toolchain CI builds and tests with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY src src
COPY benches benches
RUN cargo build --profile image --locked --no-default-features --bin eventscope \
 && strip target/image/eventscope

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/image/eventscope /usr/local/bin/eventscope
USER 65532:65532
EXPOSE 9464 15001 19092
ENTRYPOINT ["/usr/local/bin/eventscope"]
CMD ["sidecar", "--help"]
