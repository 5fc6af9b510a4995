# Redis for rtnstream's job state: Debian 12's redis-server on the same BASE_IMAGE as the rtnstream image
# (docs/deploy.md). Append-only file and snapshots in the /data volume; runs as Debian's `redis` user.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["--dir", "/data", "--appendonly", "yes"]
