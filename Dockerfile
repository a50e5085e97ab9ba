# Makelaar in a container: a Rust build stage, then a small Debian runtime with the binary only.
#
#   docker build -t makelaar .
#   docker run -d --name makelaar -p 1883:1883 -v makelaar-data:/var/lib/makelaar makelaar
#
# With a configuration (and TLS on 8883), mount a directory on /etc/makelaar:
#
#   docker run -d -p 1883:1883 -p 8883:8883 -v makelaar-data:/var/lib/makelaar \
#       -v "$PWD/config:/etc/makelaar:ro" makelaar \
#       serve --config /etc/makelaar/makelaar.toml --data-dir /var/lib/makelaar
#
# `docker kill -s HUP makelaar` reloads passwords, ACLs and certificates. See docs/user-guide.md.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN cargo build --release --locked -p makelaar \
    && strip target/release/makelaar

FROM debian:bookworm-slim
RUN useradd --system --uid 1883 --user-group --home-dir /var/lib/makelaar \
        --shell /usr/sbin/nologin makelaar \
    && install -d -o makelaar -g makelaar -m 0700 /var/lib/makelaar \
    && install -d -m 0755 /etc/makelaar
COPY --from=build /src/target/release/makelaar /usr/local/bin/makelaar
USER makelaar
WORKDIR /var/lib/makelaar
VOLUME ["/var/lib/makelaar"]
EXPOSE 1883 8883
# Every interface of the container: it is the published ports that decide who can connect.
ENTRYPOINT ["/usr/local/bin/makelaar"]
CMD ["serve", "--listen", "mqtt://0.0.0.0:1883", "--data-dir", "/var/lib/makelaar"]
