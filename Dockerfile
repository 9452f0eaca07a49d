# Builds the `canopy` binary; docker-compose.yml runs it next to NATS.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin canopy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/canopy /usr/local/bin/canopy
ENV CANOPY_HTTP=0.0.0.0:4000 CANOPY_DATA_DIR=/data
VOLUME /data
EXPOSE 4000
ENTRYPOINT ["canopy"]
CMD ["serve"]
