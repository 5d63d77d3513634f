# A stand-in for redis:7.4-alpine, from Debian packages (bookworm's redis-server is 7.0; the
# service uses streams, consumer groups and pub/sub, all there since 5.0). Like the official
# image's entrypoint, it turns protected mode off when redis-server runs without a config file,
# so that other containers on the compose network can connect.
ARG BASE_IMAGE=vidserve-e2e/debian:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The single quotes are meant: the entrypoint expands its arguments, not this RUN.
# hadolint ignore=DL3008,SC2016
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && printf '%s\n' '#!/bin/sh' \
        'if [ "${1:-}" = redis-server ]; then shift; set -- redis-server "$@" --protected-mode no; fi' \
        'exec "$@"' > /usr/local/bin/docker-entrypoint.sh \
    && chmod 755 /usr/local/bin/docker-entrypoint.sh
# Debian's redis user (its uid is whatever the package's postinst gave it).
# hadolint ignore=DL3066
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
